"""The conditional drift network h(theta, t | support set) -> d theta/dt.

One token per bias layer l (L tokens, not P), plus a small head shared by all P coordinates:

    x      = (theta - theta_offset) / theta_scale_l             [B, P]  per-layer input normaliser
    s      = (stats - stat_offset) / stat_scale                 [B, K, P]  support site statistics
    z_l    = W_in_l^T x_l ;  zs_l = sum_k W_kl^T s_kl          [B, L, d]  (n_l -> d per layer)
    cond   = MLP(task ++ fourier(t / horizon))                 [B, w]
    h_l    = stem(z_l ++ e_l ++ mean_l z_l ++ zs_l)            [B, L, w]  e_l: layer embedding
             + cond * g(e_l)
    h      = FiLM residual MLP blocks, shared over layers      [B, L, w]  FiLM(cond) * g'(e_l)
    u_c    = (W_out_l^T head(h_l))_c + local(x_c, s_c, ctx(h_l))  [B, P]  c a coordinate of l
    v      = velocity_scale_l * u                              [B, P]

Site statistics (site_stats.py) tell, per bias, where the support set's activations sit against
the base domains. The local head is one small MLP over every coordinate's own (theta, statistics)
and its layer's context: it generalises across channels from few trajectories where an n_l x d
map per layer cannot, and it costs O(P).

The layer gates g(e_l) = 1 + Linear(e_l) (zero-initialised) let every layer read its own mix of
the condition; on the quadratic test family they halve the endpoint error at a fixed budget
compared with adding the same cond to every token. There is no LayerNorm before the head: the
velocity is close to linear in theta, and a final norm would throw the input's magnitude away.
Parameters are ~(2 + K) d P (K = 3 site statistics or 0) plus a trunk independent of P,
~depth (6 w^2 + 2 d w): P can grow to ViT scale (~100k), and width and depth set the size.
The trunk predicts unit-scale velocities; `fit_normalizer` sets the per-layer scales from data.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict

import torch
from torch import Tensor, nn

from hyperflow.bias import BiasLayout
from hyperflow.drift.layers import FiLMBlock, LayerGroups, LayerwiseIn, LayerwiseOut, zero_linear
from hyperflow.drift.prepared import Prepared, TimeRows, prepare, time_rows, velocity
from hyperflow.drift.site_stats import STATS, support_site_stats
from hyperflow.drift.sizes import DRIFT_SIZES, DriftConfig, DriftSize
from hyperflow.drift.task import PrototypePooling, Task

_CTX, _LOCAL = 16, 32  # per-coordinate head: layer-context size, hidden width
# Normalised site statistics are squashed smoothly into (-3, 3): a shift family collection never
# saw puts them far outside the training range, where the MLPs would extrapolate linearly.
# Measured on the quickstart (held-out, 30 episodes/domain, same store): cubic@20 75.0 -> 75.4,
# cubic@50 75.2 -> 75.7, linear@1 75.8 -> 75.7.
_SQUASH = 3.0


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
        cfg = cfg.resolved()  # validated, every dimension explicit: drift.json names them all
        assert horizon > 0, f"horizon must be > 0, got {horizon}"
        self.layout, self.cfg = layout, cfg
        self.feature_dim, self.horizon = feature_dim, float(horizon)
        s = cfg.dims()
        L, d, w = len(layout.entries), s.layer_dim, s.width
        K = len(STATS) if cfg.site_stats else 0
        self.task_dim, self.n_stats = s.task_dim, K
        self.frozen_encoder = cfg.encoder == "target"
        if self.frozen_encoder:
            encoder.requires_grad_(False)
            encoder.eval()
            # held, not owned: the target's weights belong to the target checkpoint, so they stay
            # out of state_dict() (drift files, trainer checkpoints) and out of what DDP / FSDP
            # wrap and shard (the trainer runs this encoder outside the wrapped forward)
            object.__setattr__(self, "encoder", encoder)
            # checkpoints written while the target was a submodule hold its weights: skip them
            self.register_load_state_dict_pre_hook(_skip_encoder_keys)
        else:
            self.encoder = encoder
        self.pool = PrototypePooling(feature_dim, w, s.task_dim)
        if cfg.task_stats:
            assert K, "task_stats needs site statistics"
            # The prototype pooling sees the last layer only. A probe of a trained small drift's
            # embedding told a procedural episode's primitives apart no better than an untrained
            # one's (mean AUC 0.64 vs 0.63); its site statistics did better (0.70). Per layer
            # and statistic: the mean and RMS of the normalised values [B, 2 K L] -> task_dim,
            # added to the embedding (zero-initialised: training starts from the plain drift).
            self.stat_pool = nn.Sequential(
                nn.Linear(2 * K * L, w), nn.GELU(), zero_linear(w, s.task_dim)
            )
            self.register_buffer("layer_numel", layout.layer_index().bincount(), False)  # [L]

        self.groups = LayerGroups(layout)
        self.register_buffer("layer_index", layout.layer_index(), persistent=False)  # [P]
        # token of each layout layer (tokens are in size-group order), for per-coordinate gathers
        self.register_buffer("layer_token", torch.argsort(self.groups.token_layer), False)  # [L]
        self.register_buffer("theta_offset", torch.zeros(layout.size))  # [P]
        self.register_buffer("theta_scale", torch.ones(L))  # [L], layout order
        self.register_buffer("velocity_scale", torch.ones(L))  # [L], layout order
        if K:
            self.register_buffer("stat_offset", torch.zeros(K, layout.size))  # [K, P]
            self.register_buffer("stat_scale", torch.ones(K, layout.size))  # [K, P]
        # Fourier frequencies pi * 1..K for tau = t / horizon in [0, 1]
        self.register_buffer("freqs", math.pi * torch.arange(1, s.time_dim // 2 + 1).float(), False)

        self.inp = LayerwiseIn(self.groups, d)
        self.stat_in = nn.ModuleList(LayerwiseIn(self.groups, d) for _ in range(K))
        self.layer_embed = nn.Parameter(torch.randn(L, d) / d**0.5)  # [L, d], token order
        self.cond = nn.Sequential(nn.Linear(s.task_dim + s.time_dim, w), nn.GELU(), nn.Linear(w, w))
        self.stem = nn.Linear((4 if K else 3) * d, w)
        self.layer_gate = zero_linear(d, w)
        self.blocks = nn.ModuleList(FiLMBlock(w, d) for _ in range(s.depth))
        self.head = nn.Linear(w, d)
        self.out = LayerwiseOut(self.groups, d)
        self.ctx = nn.Linear(w, _CTX)
        self.local = nn.Sequential(nn.Linear(1 + K + _CTX, _LOCAL), nn.GELU(), nn.Linear(_LOCAL, 1))
        nn.init.zeros_(self.local[-1].weight)  # the untrained drift starts close to "do not move"
        nn.init.zeros_(self.local[-1].bias)

    def _apply(self, fn, recurse: bool = True):
        # .to(device) / .float() reach the held frozen encoder as they did when it was a submodule
        if self.frozen_encoder:
            self.encoder._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def num_parameters(self) -> int:
        """Trained parameters: the network's, and a trained encoder's (never the frozen target)."""
        return sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True) -> DriftNet:
        super().train(mode)
        if self.frozen_encoder:  # keep BatchNorm statistics / dropout of the target fixed
            self.encoder.eval()
        return self

    def support_inputs(
        self, images: Tensor, labels: list[Tensor], chunk: int = 0, compiled: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """One encoder pass over the support images [N, C, H, W] of B episodes (labels: per
        episode [N_b] in 0..way-1) -> (features [N, F], raw site statistics [B, K, P] or None).
        With a frozen encoder both are fixed per support set, so a trainer may cache them.
        chunk > 0: `chunk` images per forward (same result, peak memory of one chunk).
        compiled: with site statistics, the pass runs torch.compile'd (site_stats.py; same result
        up to float rounding, for inference: one compile per process and input shape)."""
        with torch.no_grad() if self.frozen_encoder else nullcontext():
            if self.n_stats:
                features, stats = support_site_stats(
                    self.encoder, self.layout, images, labels, chunk, compiled
                )
            else:
                pieces = images.split(chunk) if chunk > 0 else [images]
                features, stats = torch.cat([self.encoder(x) for x in pieces]), None
        expected = (images.shape[0], self.feature_dim)
        assert features.shape == expected, f"encoder gave {tuple(features.shape)}, not {expected}"
        return features, stats

    def make_task(self, features: Tensor, labels: list[Tensor], stats: Tensor | None) -> Task:
        """The trained part of task encoding: pool features [N, F], normalise stats [B, K, P]."""
        embedding = self.pool(features.float(), labels)  # [B, task_dim]
        if not self.n_stats:
            return Task(embedding)
        assert stats is not None, "this drift network is conditioned on site statistics"
        z = (stats.float() - self.stat_offset) / self.stat_scale
        squashed = _SQUASH * torch.tanh(z / _SQUASH)  # [B, K, P]
        if self.cfg.task_stats:
            embedding = embedding + self.stat_pool(self._layer_summary(squashed))
        return Task(embedding, squashed)

    def _layer_summary(self, s: Tensor) -> Tensor:
        # s [B, K, P] -> per layer (layout order) mean and RMS over its coordinates [B, 2 K L]
        B, K, _ = s.shape
        zeros = s.new_zeros(B, K, len(self.layer_numel))
        mean = zeros.index_add(2, self.layer_index, s) / self.layer_numel
        rms = (zeros.index_add(2, self.layer_index, s * s) / self.layer_numel).sqrt()
        return torch.cat([mean, rms], dim=1).flatten(1)

    def encode_tasks(
        self, supports: list[tuple[Tensor, Tensor]], chunk: int = 0, compiled: bool = False
    ) -> Task:
        """Per episode (x float [Ns, C, H, W] normalised, y int64 [Ns] in 0..way-1; any way and
        shot) -> the Task of the batch. One encoder pass over all images (`chunk` at a time;
        compiled: see support_inputs)."""
        assert supports, "encode_tasks needs at least one episode"
        images = torch.cat([x for x, _ in supports])  # [N, C, H, W]
        labels = [y for _, y in supports]
        features, stats = self.support_inputs(images, labels, chunk, compiled)
        return self.make_task(features, labels, stats)

    def forward(self, theta: Tensor, t: Tensor, task: Task) -> Tensor:
        """theta [B, P], t [B] (or a scalar, as ODE solvers pass it) in [0, horizon], task of B
        episodes (from encode_tasks) -> d theta/dt [B, P]."""
        B, P = theta.shape
        assert P == self.layout.size, f"theta has {P} entries, layout has {self.layout.size}"
        assert task.embedding.shape == (B, self.task_dim), f"bad task {tuple(task.embedding.shape)}"
        t = t.expand(B) if t.dim() == 0 else t
        assert t.shape == (B,), f"t must be [B={B}] or a scalar, got {tuple(t.shape)}"
        x = (theta - self.theta_offset) / self.theta_scale[self.layer_index]  # [B, P]
        z = self.inp(x)  # [B, L, d]
        summary = z.mean(dim=1, keepdim=True).expand_as(z)  # whole-theta context per token
        parts = [z, self.layer_embed.expand(B, -1, -1), summary]
        local_in = [x.unsqueeze(-1)]  # per coordinate inputs, [B, P, 1] each
        if self.n_stats:
            assert task.stats is not None and task.stats.shape == (B, self.n_stats, P), (
                "this drift network needs site statistics [B, K, P] in the task"
            )
            parts.append(sum(f(task.stats[:, k]) for k, f in enumerate(self.stat_in)))
            local_in.append(task.stats.transpose(1, 2))  # [B, P, K]
        tau = (t.to(theta.dtype) / self.horizon).unsqueeze(1) * self.freqs  # [B, K']
        cond = self.cond(torch.cat([task.embedding, tau.sin(), tau.cos()], dim=1))  # [B, w]
        gate = 1 + self.layer_gate(self.layer_embed)  # [L, w]
        h = self.stem(torch.cat(parts, dim=-1)) + cond.unsqueeze(1) * gate  # [B, L, w]
        for block in self.blocks:
            h = block(h, cond, self.layer_embed)
        ctx = self.ctx(h)[:, self.layer_token][:, self.layer_index]  # [B, P, ctx] layout order
        local = self.local(torch.cat([*local_in, ctx], dim=-1)).squeeze(-1)  # [B, P]
        unit = self.out(self.head(h)) + local  # [B, P], unit-scale velocity
        return unit * self.velocity_scale[self.layer_index]

    def prepare(self, task: Task) -> Prepared:
        """What forward computes from the task and weights alone, for `velocity` (prepared.py):
        once per episode instead of once per solver step."""
        return prepare(self, task)

    def time_rows(self, prepared: Prepared, t: Tensor) -> TimeRows:
        """The time-only terms at t [S] (S = B, or S times of one episode, B = 1)."""
        embedding = prepared.embedding.expand(t.shape[0], -1)  # [S, task_dim]
        return time_rows(self, embedding, t)

    def velocity(self, theta: Tensor, prepared: Prepared, rows: TimeRows) -> Tensor:
        """forward(theta [B, P], t, task) from prepare(task) and time_rows(., t) rows [B]."""
        return velocity(self, theta, prepared, rows)

    @torch.no_grad()
    def fit_normalizer(
        self, velocities: Tensor, thetas: Tensor | None = None, stats: Tensor | None = None
    ) -> None:
        """Set velocity_scale (per-layer RMS of velocities [N, P]) and, given thetas [N, P],
        theta_offset (per-coordinate mean) and theta_scale (per-layer RMS deviation, floored at
        the velocity scale so a layer that never varied cannot blow inputs up); given raw site
        statistics [M, K, P] of M support sets, their per-coordinate mean and std."""
        v_rms = self._layer_rms(velocities.float()).clamp_min(1e-8)  # [L]
        self.velocity_scale.copy_(v_rms)
        if thetas is not None:
            offset = thetas.float().mean(dim=0)  # [P]
            self.theta_offset.copy_(offset)
            self.theta_scale.copy_(torch.maximum(self._layer_rms(thetas.float() - offset), v_rms))
        if stats is not None and self.n_stats:
            assert stats.dim() == 3 and stats.shape[0] > 1, "need [M > 1, K, P] site statistics"
            self.stat_offset.copy_(stats.float().mean(dim=0))
            self.stat_scale.copy_(stats.float().std(dim=0).clamp_min(1e-3))

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
            "params": self.num_parameters(),
        }


def _skip_encoder_keys(module, state_dict, prefix, *_) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
        del state_dict[key]


__all__ = ["DRIFT_SIZES", "DriftConfig", "DriftNet", "DriftSize"]
