"""SMAT in the bias space: a shared dense delta, M sparse experts over it, a task router.

Expert m is the sparse vector z_m * theta_delta ([P]: its hard-concrete gates over the shared
dense delta). A hypernetwork ("router") reads the support set's class prototypes under the FROZEN
target at its pretrained biases and emits merging weights alpha [M] (softmax); the task's biases
are theta_pre + sum_m alpha_m * (z_m * theta_delta). One forward pass of the support set, no
backward, adapts a task: the zero-shot merge the evaluator runs.

Departures from the paper (szc12153/sparse_meta_tuning), all for the bias space or simplicity:
the paper's router is a transformer block over the prototypes plus 4 learned tokens scored
against learned expert keys with a relaxed-Bernoulli selection normalised by its sum; ours is a
deep-sets MLP (mean over classes) with a softmax, as the issue specifies. The paper also takes one
inner gradient step on the support set during meta-training; we do not (no backward at test time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hyperflow.bias import get_theta
from hyperflow.model import TargetModel
from hyperflow.smat.gates import HardConcreteGates


@dataclass
class SmatConfig:
    """SMAT hyperparameters; "paper" marks a default taken from the public code's configs."""

    experts: int = 8  # M, paper (sparsity.num_experts: 8)
    tau: float = 0.1  # share of non-zero gates per expert; paper: sparsity target 0.90 = 1 - tau
    kd_weight: float = 1 / 3  # KD / CE ratio; paper: (1 - lam) CE + lam KD with lam = 0.25
    temperature: float = 2.0  # KD temperature T, paper (dense_teacher.T: 2)
    width: int = 128  # router hidden width (ours; paper: the backbone's feature width)
    beta: float = 2 / 3  # hard-concrete temperature, paper and Louizos et al.
    gamma: float = -0.1  # hard-concrete stretch, paper and Louizos et al.
    zeta: float = 1.1
    init_std: float = 0.5  # log_alpha spread, paper
    penalty_rho: float = 10.0  # quadratic weight of the augmented-Lagrangian penalty (ours)
    penalty_rate: float = 1.0  # multiplier ascent rate per training step (ours)

    def __post_init__(self) -> None:
        assert self.experts >= 1, f"experts must be >= 1, got {self.experts}"
        assert 0.0 < self.tau < 1.0, f"tau (share of non-zero gates) must be in (0, 1): {self.tau}"
        assert self.kd_weight >= 0 and self.temperature > 0, "kd_weight >= 0, temperature > 0"
        assert self.width >= 1, f"width must be >= 1, got {self.width}"


class Router(nn.Module):
    """Support set -> merging weights alpha [M]: rho(mean_c phi(prototype_c), log way, log shot).

    Mean pooling over classes and per-class means over images make it invariant to the order of
    images and to relabelling the classes."""

    def __init__(self, feature_dim: int, width: int, experts: int):
        super().__init__()
        # LayerNorm first: backbone feature scales are arbitrary (the target head uses cosine)
        self.phi = nn.Sequential(
            nn.LayerNorm(feature_dim), nn.Linear(feature_dim, width), nn.GELU(),
            nn.Linear(width, width),
        )  # fmt: skip
        # log way and log shot: mean pooling cannot count classes, and both change the task
        self.rho = nn.Sequential(nn.Linear(width + 2, width), nn.GELU(), nn.Linear(width, experts))
        nn.init.zeros_(self.rho[-1].weight)  # start from the uniform mixture alpha = 1/M
        nn.init.zeros_(self.rho[-1].bias)

    def forward(self, features: Tensor, labels: list[Tensor]) -> Tensor:
        """features [N, F]: all episodes' support features, episode by episode; labels: one [Ns]
        per episode in 0..way-1, every class present (sum of Ns = N). Returns alpha [B, M]."""
        assert features.shape[0] == sum(len(y) for y in labels), "features and labels disagree"
        dev = features.device
        way = torch.tensor([int(y.max()) + 1 for y in labels], device=dev)  # [B]
        shot = torch.tensor([len(y) for y in labels], device=dev) / way  # [B] mean shot
        first = torch.cumsum(way, 0) - way  # [B] first global class id of each episode
        gid = torch.cat([y.to(dev) + o for y, o in zip(labels, first)])  # [N] global class id
        C, B = int(way.sum()), len(labels)
        counts = torch.bincount(gid, minlength=C)  # [C]
        assert bool((counts > 0).all()), "every class 0..way-1 needs a support image"
        protos = features.new_zeros(C, features.shape[1]).index_add(0, gid, features)
        protos = protos / counts.unsqueeze(1).to(features.dtype)  # [C, F] class means
        u = self.phi(protos)  # [C, w]
        episode = torch.repeat_interleave(torch.arange(B, device=dev), way)  # [C]
        pooled = u.new_zeros(B, u.shape[1]).index_add(0, episode, u) / way.unsqueeze(1)  # [B, w]
        counts_in = torch.stack([way.log(), shot.log()], dim=1).to(u.dtype)  # [B, 2]
        return torch.softmax(self.rho(torch.cat([pooled, counts_in], dim=1)), dim=-1)  # [B, M]


class Smat(nn.Module):
    """Shared dense delta theta_delta [P], gates z [M, P] and the router, for a target with P
    tunable biases and F-dimensional features."""

    def __init__(self, cfg: SmatConfig, size: int, feature_dim: int):
        super().__init__()
        self.cfg = cfg
        self.theta_delta = nn.Parameter(torch.zeros(size))  # [P], paper: zero init
        self.gates = HardConcreteGates(
            cfg.experts, size, cfg.beta, cfg.gamma, cfg.zeta, init_density=cfg.tau,
            init_std=cfg.init_std,
        )  # fmt: skip
        self.router = Router(feature_dim, cfg.width, cfg.experts)

    @property
    def size(self) -> int:
        return self.theta_delta.shape[0]

    def merging_weights(self, features: Tensor, labels: list[Tensor]) -> Tensor:
        """Frozen-target support features [N, F] and per-episode labels -> alpha [B, M]."""
        return self.router(features, labels)

    def merged_theta(self, theta_pre: Tensor, alpha: Tensor, z: Tensor) -> Tensor:
        """theta_pre [P], alpha [B, M], z [M, P] -> theta [B, P] =
        theta_pre + sum_m alpha[b, m] * (z[m] * theta_delta)."""
        P, M = self.size, self.cfg.experts
        assert theta_pre.shape == (P,), f"theta_pre {tuple(theta_pre.shape)} != ({P},)"
        assert alpha.dim() == 2 and alpha.shape[1] == M, f"alpha {tuple(alpha.shape)} != (B, {M})"
        assert z.shape == (M, P), f"z {tuple(z.shape)} != ({M}, {P})"
        experts = z * self.theta_delta  # [M, P] sparse experts
        return theta_pre + alpha @ experts  # [B, P]

    def forward(
        self,
        theta_pre: Tensor,
        features: Tensor,
        labels: list[Tensor],
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Task biases theta [B, P] for B support sets (gates sampled once in training mode,
        deterministic in eval mode)."""
        alpha = self.merging_weights(features, labels)  # [B, M]
        return self.merged_theta(theta_pre, alpha, self.gates(generator))

    def param_groups(self, lr: float, gate_lr: float) -> list[dict]:
        """Optimizer groups: the dense delta and router at lr, the gates' log_alpha at gate_lr
        (the paper gives the masks their own, much larger, learning rate)."""
        return [
            {"params": [self.theta_delta, *self.router.parameters()], "lr": lr, "name": "dense"},
            {"params": [self.gates.log_alpha], "lr": gate_lr, "name": "gates"},
        ]

    @torch.no_grad()
    def adapted_theta(self, model: TargetModel, support_x: Tensor, support_y: Tensor) -> Tensor:
        """Zero-shot merge for one support set: uint8 support_x [N, C, H, W], labels [N] ->
        theta [P] (deterministic gates whatever the mode; one forward of the frozen target)."""
        assert not model.training, "the target must be frozen: call model.eval() (BatchNorm stats)"
        theta_pre = get_theta(model.backbone, model.layout)  # [P]
        dev = theta_pre.device
        feats = model.features(model.preprocess(support_x.to(dev)).to(theta_pre.dtype))  # [N, F]
        alpha = self.merging_weights(feats, [support_y.to(dev)])  # [1, M]
        return self.merged_theta(theta_pre, alpha, self.gates.deterministic())[0]
