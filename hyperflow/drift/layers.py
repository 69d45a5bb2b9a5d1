"""Per-layer linear maps between theta [B, P] and one d-dim token per bias layer [B, L, d].

A separate (n_l x d) matrix per layer keeps parameters linear in P (no P x P layer). Layers are
grouped by size n so each group is a single batched matmul: a ViT has ~150 bias layers but only
a handful of distinct sizes, so a forward pass is a few einsums instead of a Python loop over L.
Tokens are kept in *group order* (layers sorted by size, then by layout position); `token_layer`
maps token k back to its layout entry. FiLMBlock is the trunk block that mixes in the condition.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hyperflow.bias import BiasLayout


class LayerGroups(nn.Module):
    """Index bookkeeping: theta coordinates <-> (size group, layer, coordinate) blocks."""

    def __init__(self, layout: BiasLayout):
        super().__init__()
        sizes = [e.numel for e in layout.entries]
        self.group_sizes = sorted(set(sizes))  # distinct n, ascending
        self.group_layers = [[i for i, n in enumerate(sizes) if n == g] for g in self.group_sizes]
        order = [i for ids in self.group_layers for i in ids]  # layout index of each token
        coords = [
            torch.arange(layout.entries[i].offset, layout.entries[i].offset + sizes[i])
            for i in order
        ]
        perm = torch.cat(coords)  # [P]: theta index of each grouped coordinate
        # derived from the layout, so not saved with the weights
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(perm), persistent=False)
        self.register_buffer("token_layer", torch.tensor(order), persistent=False)

    def split(self, x: Tensor) -> list[Tensor]:
        """x [B, P] -> per size group [B, L_g, n_g]."""
        chunks = x[:, self.perm].split([len(ids) * n for ids, n in self.members()], dim=1)
        return [c.reshape(x.shape[0], len(ids), n) for c, (ids, n) in zip(chunks, self.members())]

    def merge(self, blocks: list[Tensor]) -> Tensor:
        """Inverse of split: per group [B, L_g, n_g] -> x [B, P] in layout order."""
        flat = torch.cat([b.reshape(b.shape[0], -1) for b in blocks], dim=1)
        return flat[:, self.inv_perm]

    def members(self) -> list[tuple[list[int], int]]:
        """(layout indices of the layers, their size n) per size group."""
        return list(zip(self.group_layers, self.group_sizes))


class LayerwiseIn(nn.Module):
    """theta-like [B, P] -> tokens [B, L, d]: token_l = W_l^T x_l + b_l, W_l [n_l, d]."""

    def __init__(self, groups: LayerGroups, d: int):
        super().__init__()
        self.groups = groups
        self.weight = nn.ParameterDict()
        self.bias = nn.ParameterDict()
        for ids, n in groups.members():
            # inputs are normalised to unit scale per coordinate -> unit-scale tokens
            self.weight[f"n{n}"] = nn.Parameter(torch.randn(len(ids), n, d) / n**0.5)
            self.bias[f"n{n}"] = nn.Parameter(torch.zeros(len(ids), d))

    def forward(self, x: Tensor) -> Tensor:
        out = []
        for block, n in zip(self.groups.split(x), self.groups.group_sizes):
            # block [B, L_g, n] x weight [L_g, n, d] -> [B, L_g, d]
            key = f"n{n}"
            out.append(torch.einsum("bln,lnd->bld", block, self.weight[key]) + self.bias[key])
        return torch.cat(out, dim=1)


class LayerwiseOut(nn.Module):
    """tokens [B, L, d] -> [B, P]: out_l = W_l^T h_l + b_l, W_l [d, n_l] (the per-layer heads)."""

    def __init__(self, groups: LayerGroups, d: int, init_scale: float = 0.1):
        super().__init__()
        self.groups = groups
        self.weight = nn.ParameterDict()
        self.bias = nn.ParameterDict()
        for ids, n in groups.members():
            # small initial outputs: the untrained drift starts close to "do not move"
            self.weight[f"n{n}"] = nn.Parameter(init_scale * torch.randn(len(ids), d, n) / d**0.5)
            self.bias[f"n{n}"] = nn.Parameter(torch.zeros(len(ids), n))

    def forward(self, h: Tensor) -> Tensor:
        tokens = h.split([len(ids) for ids in self.groups.group_layers], dim=1)
        blocks = [
            torch.einsum("bld,ldn->bln", tok, self.weight[f"n{n}"]) + self.bias[f"n{n}"]
            for tok, n in zip(tokens, self.groups.group_sizes)
        ]
        return self.groups.merge(blocks)


def zero_linear(n_in: int, n_out: int) -> nn.Linear:
    # gates start as the identity (1 + 0) so training begins from plain conditioning
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FiLMBlock(nn.Module):
    """Pre-norm residual MLP over layer tokens, modulated by the (task, time) condition."""

    def __init__(self, width: int, d: int):
        super().__init__()
        self.layer_gate = zero_linear(d, 2 * width)
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(width, 2 * width)
        hidden = 2 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, h: Tensor, cond: Tensor, e: Tensor) -> Tensor:
        # h [B, L, w], cond [B, w], e [L, d] layer embeddings
        mod = self.film(cond).unsqueeze(1) * (1 + self.layer_gate(e))  # [B, L, 2w]
        scale, shift = mod.chunk(2, dim=-1)  # [B, L, w] each
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)
