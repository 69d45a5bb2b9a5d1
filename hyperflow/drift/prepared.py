"""The drift at test time: split by what each piece of h(theta, t | task) depends on.

An adaptation integrates one episode's drift for `steps` solver steps. DriftNet.forward recomputes
everything at every step; most of it depends on the task alone (site-statistics tokens, layer
gates, the per-coordinate head's statistics term) or on t alone (the condition MLP and the FiLM
modulations), and the per-layer maps run as one einsum per size group. Here

    prepare(net, task)             once per episode: task- and weight-only terms     (Prepared)
    time_rows(net, prep, t [S])    once per adaptation for all solver times at once  (TimeRows)
    velocity(net, theta, prep, r)  per step: only what depends on theta

compute the same function as forward with fewer ops per step: linear maps are split and composed
(stem(z ++ e ++ mean z ++ zs) = z W_z + mean(z W_s) + [e W_e + zs W_zs + b]; the local head's
context term A_c (W_ctx h + b_ctx) = (A_c W_ctx) h + A_c b_ctx), and the per-layer in/out maps
become one scatter-add / one gather over coordinates with per-coordinate weight rows [P, d].
Equal to forward up to float rounding of the new op order (tests compare in float64). forward
stays the reference and what training differentiates: its einsums never build [B, P, d] tensors,
which at training batch sizes and ViT-sized P the per-coordinate rows here would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from hyperflow.drift.task import Task


@dataclass
class Prepared:
    """Per-episode terms of B tasks (B = 1 in an adaptation); P coords, L tokens, d, w widths."""

    embedding: Tensor  # [B, task_dim]
    scale: Tensor  # [P] theta_scale of each coordinate's layer
    velocity_scale: Tensor  # [P]
    token: Tensor  # [Q] token (group order) of each chunk of coordinates (see _chunk)
    flat_token: Tensor  # [B Q] b L + token: episode b's chunks into B L flat tokens
    w_in: Tensor  # [Q, c, d] coordinate weights in their layers' input maps, by chunk
    b_in: Tensor  # [B L, d] input-map bias, flat tokens
    w_stem: Tensor  # [d, 2w] stem weights of z (first w) and of the token mean (last w)
    stem_base: Tensor  # [B, L, w] stem of layer embeddings and statistics tokens, plus bias
    gate: Tensor  # [L, w] 1 + layer_gate(e)
    block_gates: list[Tensor]  # per block [L, 2w]
    w_read: Tensor  # [d + H, w] head, and context -> local hidden composed (H local width)
    b_read: Tensor  # [d + H]
    w_out: Tensor  # [Q, c, d] coordinate weights in their layers' output maps, by chunk
    b_out: Tensor  # [P] output-map bias plus the local head's last bias
    local_base: Tensor  # [B, Q, c, H] local head's statistics term plus its first bias
    a_x: Tensor  # [H] local head's weights of the coordinate's own x
    w_local: Tensor  # [H] local head's last weights


@dataclass
class TimeRows:
    """Condition MLP output and FiLM terms at S times (row k pairs with time k)."""

    cond: Tensor  # [S, w]
    films: list[Tensor]  # per block [S, 2w]

    def row(self, k: int) -> TimeRows:
        return TimeRows(self.cond[k : k + 1], [f[k : k + 1] for f in self.films])


def prepare(net, task: Task) -> Prepared:
    """The task- and weight-only terms of net's drift for the B episodes of `task`."""
    B, d = task.embedding.shape[0], net.layer_embed.shape[1]
    fixed = _fixed(net)
    Q, c, _ = fixed["w_in"].shape
    base = fixed["stem_e"].expand(B, -1, -1)  # [B, L, w]
    local_base = fixed["local_bias"].expand(B, Q, c, -1)  # [B, Q, c, H]
    token, L = fixed["token"], net.layer_embed.shape[0]
    flat_token = (torch.arange(B, device=token.device).unsqueeze(1) * L + token).flatten()
    K = net.n_stats
    if K:
        stats = task.stats  # [B, K, P]
        assert stats is not None and stats.shape[1:] == (K, net.layout.size), "need stats"
        # sum_k stat_in[k](stats[:, k]) as velocity computes inp(x): chunk sums of rows, one
        # scatter-add (an einsum here runs as a bmm batched over P, ~10x slower on CPU)
        src = (stats.unsqueeze(-1) * fixed["stat_rows"]).sum(dim=1)  # [B, P, d]
        src = src.reshape(B * Q, c, d).sum(dim=1)
        zs = fixed["stat_b"].repeat(B, 1).index_add(0, flat_token, src).reshape(B, L, d)
        base = base + zs @ net.stem.weight[:, 3 * d :].T
        local_stats = stats.transpose(1, 2) @ net.local[0].weight[:, 1 : 1 + K].T  # [B, P, H]
        local_base = local_base + local_stats.reshape(B, Q, c, -1)
    return Prepared(
        embedding=task.embedding,
        flat_token=flat_token,
        b_in=fixed["b_in"].repeat(B, 1),
        stem_base=base,
        local_base=local_base,
        **{k: v for k, v in fixed.items() if k in _SHARED},
    )


_SHARED = {f for f in Prepared.__dataclass_fields__} - {
    "embedding",
    "flat_token",
    "b_in",
    "stem_base",
    "local_base",
}


def _fixed(net) -> dict[str, Tensor]:
    # The weight-only terms: ~85% of prepare's time (per-coordinate rows, layer gates), the same
    # for every episode. Cached on the net, keyed by every parameter's and buffer's version
    # counter, so an optimizer step, load_state_dict or fit_normalizer recomputes them.
    # (the encoder's weights are not read here: skipping them halves the cost of the key)
    parts = [m for name, m in net.named_children() if name != "encoder"]
    tensors = [*net.parameters(recurse=False), *net.buffers(recurse=False)]
    tensors += [t for m in parts for t in (*m.parameters(), *m.buffers())]
    # and the grad mode: terms built under no_grad or inference_mode must not reach autograd
    key = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    key += tuple((id(t), t._version) for t in tensors)
    cached = net.__dict__.get("_prepared_fixed")
    if cached is not None and cached[0] == key:
        return cached[1]
    fixed = _fixed_terms(net)
    net.__dict__["_prepared_fixed"] = (key, fixed)
    return fixed


def _fixed_terms(net) -> dict[str, Tensor]:
    d, c = net.layer_embed.shape[1], _chunk(net.layout)
    e = net.layer_embed  # [L, d] token order
    w_stem = net.stem.weight  # [w, (3 or 4) d]: columns z, e, mean z, statistics tokens
    local_w = net.local[0].weight  # [H, 1 + K + ctx]: columns x, K statistics, context
    a_ctx = local_w[:, 1 + net.n_stats :]  # [H, ctx]
    stat_in = list(net.stat_in) if net.n_stats else []
    return {
        "stat_rows": torch.stack([_rows_in(f) for f in stat_in]) if stat_in else None,  # [K, P, d]
        "stat_b": sum(_tokens(f.bias, net.groups) for f in stat_in) if stat_in else None,  # [L, d]
        "stem_e": F.linear(e, w_stem[:, d : 2 * d], net.stem.bias),  # [L, w]
        "local_bias": net.local[0].bias,  # [H]
        "scale": net.theta_scale[net.layer_index],
        "velocity_scale": net.velocity_scale[net.layer_index],
        "token": net.layer_token[net.layer_index][::c],
        "w_in": _rows_in(net.inp).reshape(-1, c, d),
        "b_in": _tokens(net.inp.bias, net.groups),  # [L, d]
        "w_stem": torch.cat([w_stem[:, :d], w_stem[:, 2 * d : 3 * d]], dim=0).T,
        "gate": 1 + net.layer_gate(e),
        "block_gates": [1 + block.layer_gate(e) for block in net.blocks],
        "w_read": torch.cat([net.head.weight, a_ctx @ net.ctx.weight]),
        "b_read": torch.cat([net.head.bias, a_ctx @ net.ctx.bias]),
        "w_out": _rows_out(net.out).reshape(-1, c, d),
        "b_out": net.groups.merge([b.unsqueeze(0) for b in _group_biases(net.out)])[0]
        + net.local[-1].bias,
        "a_x": local_w[:, 0].contiguous(),  # a strided column is gathered per element
        "w_local": net.local[-1].weight[0],
    }


def time_rows(net, embedding: Tensor, t: Tensor) -> TimeRows:
    """Condition and FiLM terms for S (task embedding [S, D], time [S]) pairs."""
    tau = (t.to(embedding.dtype) / net.horizon).unsqueeze(1) * net.freqs  # [S, K']
    cond = net.cond(torch.cat([embedding, tau.sin(), tau.cos()], dim=1))  # [S, w]
    return TimeRows(cond, [block.film(cond) for block in net.blocks])


def velocity(net, theta: Tensor, prep: Prepared, rows: TimeRows) -> Tensor:
    """d theta/dt [B, P] at theta [B, P] for prepared tasks and their time rows ([B, ...])."""
    (B, P), (L, d) = theta.shape, net.layer_embed.shape
    Q, c, _ = prep.w_in.shape
    x = (theta - net.theta_offset) / prep.scale  # [B, P]
    xc = x.reshape(B, Q, c, 1)
    # per chunk, then one scatter-add of [B Q, d] rows into the B L tokens
    src = (xc * prep.w_in).sum(dim=2).reshape(B * Q, d)
    z = prep.b_in.index_add(0, prep.flat_token, src).reshape(B, L, d)
    a = z @ prep.w_stem  # [B, L, 2w]
    w = a.shape[-1] // 2
    h = a[..., :w] + a[..., w:].mean(dim=1, keepdim=True) + prep.stem_base
    h = h + rows.cond.unsqueeze(1) * prep.gate  # [B, L, w]
    for block, gate, film in zip(net.blocks, prep.block_gates, rows.films):
        scale, shift = (film.unsqueeze(1) * gate).chunk(2, dim=-1)  # [B, L, w] each
        h = h + block.mlp(torch.addcmul(shift, block.norm(h), 1 + scale))
    # one row per chunk, broadcast over its c coordinates: a gather per coordinate inside the
    # fused kernel below cost ~3x its arithmetic (index_select, not r[:, token]: advanced
    # indexing measured ~10x slower here)
    r = F.linear(h, prep.w_read, prep.b_read).index_select(1, prep.token).unsqueeze(2)
    out = (r[..., :d] * prep.w_out).sum(dim=-1)  # [B, Q, c]
    hidden = torch.addcmul(prep.local_base + r[..., d:], xc, prep.a_x)  # [B, Q, c, H]
    out = (out + F.gelu(hidden) @ prep.w_local).reshape(B, P)
    return (out + prep.b_out) * prep.velocity_scale


def _chunk(layout) -> int:
    # coordinates per chunk: every layer's size is a multiple of it, so a chunk of consecutive
    # coordinates lies in one layer and shares its token (1 for any layout; 16 for channel counts
    # that are multiples of 16, as most backbones' are)
    return math.gcd(16, *(e.numel for e in layout.entries))


def _rows_in(layerwise) -> Tensor:
    # per group weight [L_g, n, d] -> rows [L_g n, d] in group order -> [P, d] layout order
    rows = [w.reshape(-1, w.shape[-1]) for w, _ in _weights(layerwise)]
    return torch.cat(rows)[layerwise.groups.inv_perm]


def _rows_out(layerwise) -> Tensor:
    # per group weight [L_g, d, n] -> [L_g, n, d] -> rows [P, d] layout order
    rows = [w.transpose(1, 2).reshape(-1, w.shape[1]) for w, _ in _weights(layerwise)]
    return torch.cat(rows)[layerwise.groups.inv_perm]


def _weights(layerwise) -> list[tuple[Tensor, int]]:
    return [(layerwise.weight[f"n{n}"], n) for n in layerwise.groups.group_sizes]


def _group_biases(layerwise) -> list[Tensor]:
    return [layerwise.bias[f"n{n}"] for n in layerwise.groups.group_sizes]  # [L_g, n] each


def _tokens(bias, groups) -> Tensor:
    # LayerwiseIn biases per group [L_g, d] -> [L, d] in token (group) order
    return torch.cat([bias[f"n{n}"] for n in groups.group_sizes])
