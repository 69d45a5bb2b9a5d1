"""The conditional drift network h(theta, t | support set) -> d theta/dt.

One token per bias layer l (L tokens, not P):

    x      = (theta - theta_offset) / theta_scale_l             [B, P]  per-layer input normaliser
    z_l    = W_in_l^T x_l                                      [B, L, d]  (n_l -> d per layer)
    cond   = MLP(task ++ fourier(t / horizon))                 [B, w]
    h_l    = stem(z_l ++ e_l ++ mean_l z_l) + cond * g(e_l)    [B, L, w]  e_l: layer embedding
    h      = FiLM residual MLP blocks, shared over layers      [B, L, w]  FiLM(cond) * g'(e_l)
    v_l    = velocity_scale_l * W_out_l^T head(h_l)            [B, P]  (d -> n_l per layer)

The layer gates g(e_l) = 1 + Linear(e_l) (zero-initialised) let every layer read its own mix of
the condition; on the quadratic test family they halve the endpoint error at a fixed budget
compared with adding the same cond to every token. There is no LayerNorm before the head: the
velocity is close to linear in theta, and a final norm would throw the input's magnitude away.
Parameters are ~2 d P plus a trunk independent of P, so P can grow to ViT scale (~100k).
The trunk predicts unit-scale velocities; `fit_normalizer` sets the per-layer scales from data.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from hyperflow.bias import BiasLayout
from hyperflow.drift.layers import LayerGroups, LayerwiseIn, LayerwiseOut
from hyperflow.drift.task import PrototypePooling
from hyperflow.errors import UserError
from hyperflow.interpolants import check_interpolant


@dataclass(frozen=True)
class DriftSize:
    layer_dim: int  # d: per-layer token width; the in/out maps are n_l x d
    width: int  # w: trunk width
    depth: int  # FiLM residual blocks in the trunk
    task_dim: int  # D: task embedding size
    time_dim: int  # Fourier features of t / horizon


DRIFT_SIZES: dict[str, DriftSize] = {
    "small": DriftSize(layer_dim=32, width=128, depth=2, task_dim=64, time_dim=32),
    "base": DriftSize(layer_dim=64, width=256, depth=3, task_dim=128, time_dim=64),
    "large": DriftSize(layer_dim=128, width=512, depth=4, task_dim=256, time_dim=128),
}


@dataclass
class DriftConfig:
    size: str = "small"  # key of DRIFT_SIZES
    encoder: str = "target"  # "target": frozen target backbone; else a timm name (trained)
    interpolant: str = "piecewise_cubic"  # key of INTERPOLANTS the drift is trained on

    def validate(self) -> None:
        if self.size not in DRIFT_SIZES:
            sizes = sorted(DRIFT_SIZES)
            raise UserError(f"unknown drift size {self.size!r}; choose one of {sizes}")
        if not isinstance(self.encoder, str) or not self.encoder:
            raise UserError(f"drift encoder must be 'target' or a timm name, got {self.encoder!r}")
        check_interpolant(self.interpolant)


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    # gates start as the identity (1 + 0) so training begins from plain conditioning
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _FiLMBlock(nn.Module):
    """Pre-norm residual MLP over layer tokens, modulated by the (task, time) condition."""

    def __init__(self, width: int, d: int):
        super().__init__()
        self.layer_gate = _zero_linear(d, 2 * width)
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(width, 2 * width)
        hidden = 2 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, h: Tensor, cond: Tensor, e: Tensor) -> Tensor:
        # h [B, L, w], cond [B, w], e [L, d] layer embeddings
        mod = self.film(cond).unsqueeze(1) * (1 + self.layer_gate(e))  # [B, L, 2w]
        scale, shift = mod.chunk(2, dim=-1)  # [B, L, w] each
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class DriftNet(nn.Module):
    """h(theta, t | task): velocity d theta/dt [B, P] for biases laid out by `layout`."""

    def __init__(
        self,
        layout: BiasLayout,
        cfg: DriftConfig,
        encoder: nn.Module,
        feature_dim: int,
        horizon: float,
    ):
        super().__init__()
        cfg.validate()
        assert horizon > 0, f"horizon must be > 0, got {horizon}"
        self.layout, self.cfg = layout, cfg
        self.feature_dim, self.horizon = feature_dim, float(horizon)
        s = DRIFT_SIZES[cfg.size]
        L, d, w = len(layout.entries), s.layer_dim, s.width
        self.task_dim = s.task_dim
        self.encoder = encoder
        self.frozen_encoder = cfg.encoder == "target"
        if self.frozen_encoder:
            encoder.requires_grad_(False)
            encoder.eval()
        self.pool = PrototypePooling(feature_dim, w, s.task_dim)

        self.groups = LayerGroups(layout)
        self.register_buffer("layer_index", layout.layer_index(), persistent=False)  # [P]
        self.register_buffer("theta_offset", torch.zeros(layout.size))  # [P]
        self.register_buffer("theta_scale", torch.ones(L))  # [L], layout order
        self.register_buffer("velocity_scale", torch.ones(L))  # [L], layout order
        # Fourier frequencies pi * 1..K for tau = t / horizon in [0, 1]
        self.register_buffer("freqs", math.pi * torch.arange(1, s.time_dim // 2 + 1).float(), False)

        self.inp = LayerwiseIn(self.groups, d)
        self.layer_embed = nn.Parameter(torch.randn(L, d) / d**0.5)  # [L, d], token order
        self.cond = nn.Sequential(nn.Linear(s.task_dim + s.time_dim, w), nn.GELU(), nn.Linear(w, w))
        self.stem = nn.Linear(3 * d, w)
        self.layer_gate = _zero_linear(d, w)
        self.blocks = nn.ModuleList(_FiLMBlock(w, d) for _ in range(s.depth))
        self.head = nn.Linear(w, d)
        self.out = LayerwiseOut(self.groups, d)

    def train(self, mode: bool = True) -> DriftNet:
        super().train(mode)
        if self.frozen_encoder:  # keep BatchNorm statistics / dropout of the target fixed
            self.encoder.eval()
        return self

    def encode_tasks(self, supports: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Per episode (x float [Ns, C, H, W] normalised, y int64 [Ns] in 0..way-1; any way and
        shot) -> task embeddings [B, task_dim]. One encoder pass over all images."""
        assert supports, "encode_tasks needs at least one episode"
        images = torch.cat([x for x, _ in supports])  # [N, C, H, W]
        with torch.no_grad() if self.frozen_encoder else nullcontext():
            features = self.encoder(images)
        expected = (images.shape[0], self.feature_dim)
        assert features.shape == expected, f"encoder gave {tuple(features.shape)}, not {expected}"
        return self.pool(features.float(), [y for _, y in supports])

    def forward(self, theta: Tensor, t: Tensor, task: Tensor) -> Tensor:
        """theta [B, P], t [B] (or a scalar, as ODE solvers pass it) in [0, horizon],
        task [B, task_dim] -> d theta/dt [B, P]."""
        B, P = theta.shape
        assert P == self.layout.size, f"theta has {P} entries, layout has {self.layout.size}"
        assert task.shape == (B, self.task_dim), f"bad task {tuple(task.shape)}"
        t = t.expand(B) if t.dim() == 0 else t
        assert t.shape == (B,), f"t must be [B={B}] or a scalar, got {tuple(t.shape)}"
        x = (theta - self.theta_offset) / self.theta_scale[self.layer_index]  # [B, P]
        z = self.inp(x)  # [B, L, d]
        summary = z.mean(dim=1, keepdim=True).expand_as(z)  # whole-theta context per token
        tokens = torch.cat([z, self.layer_embed.expand(B, -1, -1), summary], dim=-1)  # [B, L, 3d]
        tau = (t.to(theta.dtype) / self.horizon).unsqueeze(1) * self.freqs  # [B, K]
        cond = self.cond(torch.cat([task, tau.sin(), tau.cos()], dim=1))  # [B, w]
        gate = 1 + self.layer_gate(self.layer_embed)  # [L, w]
        h = self.stem(tokens) + cond.unsqueeze(1) * gate  # [B, L, w]
        for block in self.blocks:
            h = block(h, cond, self.layer_embed)
        unit = self.out(self.head(h))  # [B, P], unit-scale velocity
        return unit * self.velocity_scale[self.layer_index]

    @torch.no_grad()
    def fit_normalizer(self, velocities: Tensor, thetas: Tensor | None = None) -> None:
        """Set velocity_scale (per-layer RMS of velocities [N, P]) and, given thetas [N, P],
        theta_offset (per-coordinate mean) and theta_scale (per-layer RMS deviation, floored at
        the velocity scale so a layer that never varied cannot blow inputs up)."""
        v_rms = self._layer_rms(velocities.float()).clamp_min(1e-8)  # [L]
        self.velocity_scale.copy_(v_rms)
        if thetas is not None:
            offset = thetas.float().mean(dim=0)  # [P]
            self.theta_offset.copy_(offset)
            self.theta_scale.copy_(torch.maximum(self._layer_rms(thetas.float() - offset), v_rms))

    def _layer_rms(self, x: Tensor) -> Tensor:
        # x [N, P] -> root mean square over samples and the coordinates of each layer [L]
        sq = torch.zeros(len(self.layout.entries), device=x.device)
        sq = sq.index_add(0, self.layer_index, x.pow(2).mean(dim=0))
        counts = torch.bincount(self.layer_index, minlength=len(self.layout.entries))
        return (sq / counts).sqrt()

    def export_config(self) -> dict:
        """Everything (besides weights and encoder) needed to rebuild this net; JSON-able."""
        return {
            "config": asdict(self.cfg),
            "layout": self.layout.to_json(),
            "layout_hash": self.layout.hash(),
            "interpolant": self.cfg.interpolant,
            "horizon": self.horizon,
            "feature_dim": self.feature_dim,
        }
