"""Hard-concrete gates (Louizos et al. 2018) over P coordinates for each of M experts, as SMAT uses.

Training draws z = clamp(sigmoid((logit(u) + log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1)
with u ~ U(0, 1): reparameterised, and exactly 0 or 1 with positive probability. The probability
that a gate is non-zero has a closed form, P(z != 0) = sigmoid(log_alpha - beta * log(-gamma/zeta)),
so its mean over P (the expected L0 share, "density") is differentiable.

Eval gates (deterministic): Louizos' clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1) has
a non-zero share that is not the training density (a gate at its threshold is non-zero 31% of the
time in training), so a penalty on the density could not place the eval share at tau. As CoFi
pruning does (Xia et al. 2022, `deterministic_z`), eval keeps the round(density * P) coordinates
of largest log_alpha and zeroes the rest; a kept gate takes its training mean E[z] (in (0, 1),
16-node Gauss-Legendre quadrature of the closed-form CDF). So eval gates match training gates in
expectation in both count and value, and the eval non-zero share is the density to 1/P.

Sparsity penalty: an augmented Lagrangian on the density d_m of each expert,
    mean_m [ lambda_m * (d_m - tau) + rho / 2 * (d_m - tau)^2 ],
with the multiplier lambda_m raised by dual ascent, lambda_m += rate * (d_m - tau), at every
training-mode call. The quadratic term alone would stop wherever the task loss's pull on the
gates balances it; the multiplier keeps growing until d_m = tau, so the target is met whatever
the task loss's scale, in both directions (the paper's Lagrangian is one-sided: it only stops the
density exceeding 1 - its sparsity target). d_m depends only on log_alpha, which every DDP rank
holds identically, so the multiplier (a buffer) stays equal across ranks without communication.
Defaults rho = 10, rate = 1 from a toy (gates over a dense regression target that pulls every gate
on; Adam at 0.05): they hold the eval share within 2 points of tau = 0.3 from M, P = (2, 300) to
(8, 20000) after a few hundred steps, while rho = 1 with rate = 1 oscillated and rate = 0.1 had
not converged. The penalty averages over experts and coordinates (as the paper's); a task loss
that pulls on the gates much harder (the toy's target x10) takes the multiplier more steps to match.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

# Gauss-Legendre nodes/weights mapped from [-1, 1] to [0, 1], for E[z] = int_0^1 P(z > t) dt
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(16)
_T = ((_NODES + 1) / 2).tolist()
_W = (_WEIGHTS / 2).tolist()


class HardConcreteGates(nn.Module):
    """M experts' hard-concrete gates over P coordinates: log_alpha [M, P].

    beta (temperature 2/3), gamma = -0.1, zeta = 1.1, the log_alpha spread N(., 0.5^2) and clip
    [log 0.01, log 100] are the paper's (szc12153/sparse_meta_tuning, MasksCollection). The paper
    centres log_alpha at 0 (83% of gates non-zero); we centre it where P(z != 0) = init_density
    (pass the target tau): measured on a toy objective, starting 50 points above the target let
    the penalty's multiplier grow large, inflate Adam's second moments and overshoot for
    hundreds of steps; starting at the target it only has to hold the share there.
    """

    def __init__(
        self,
        experts: int,
        size: int,
        beta: float = 2 / 3,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_density: float = 0.5,
        init_std: float = 0.5,
        clip: float = math.log(100.0),
    ):
        super().__init__()
        assert experts >= 1 and size >= 1, f"need >= 1 expert and coordinate, got {experts}, {size}"
        assert gamma < 0 < 1 < zeta and beta > 0, f"need gamma < 0 < 1 < zeta, beta > 0: {gamma=}"
        self.beta, self.gamma, self.zeta, self.clip = beta, gamma, zeta, clip
        assert 0.0 < init_density < 1.0, f"init_density must be in (0, 1), got {init_density}"
        centre = math.log(init_density / (1 - init_density)) + beta * math.log(-gamma / zeta)
        self.log_alpha = nn.Parameter(centre + init_std * torch.randn(experts, size))  # [M, P]
        # Lagrange multiplier per expert (dual ascent in `penalty`); a buffer: saved, not trained
        self.register_buffer("multiplier", torch.zeros(experts))  # [M]

    @property
    def experts(self) -> int:
        return self.log_alpha.shape[0]

    def forward(self, generator: torch.Generator | None = None) -> Tensor:
        """Gates z [M, P]: a reparameterised sample in training mode, deterministic in eval."""
        return self.sample(generator) if self.training else self.deterministic()

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One reparameterised draw z [M, P] in [0, 1] (gradients reach log_alpha)."""
        la = self.log_alpha
        # drawn where the generator lives (a CPU generator gives the same gates on any device)
        dev = la.device if generator is None else generator.device
        u = torch.rand(la.shape, generator=generator, device=dev).to(la.device, la.dtype)
        u = u.clamp(1e-6, 1 - 1e-6)  # logit(u) finite
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def nonzero_prob(self) -> Tensor:
        """P(z != 0) [M, P] under the training distribution (differentiable)."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def expected_density(self) -> Tensor:
        """Expected L0 share [M]: the mean over P of P(z != 0) per expert (differentiable)."""
        return self.nonzero_prob().mean(dim=1)

    @torch.no_grad()
    def mean_gate(self) -> Tensor:
        """E[z] [M, P] under the training distribution, in (0, 1)."""
        la = self.log_alpha
        out = torch.zeros_like(la)
        for t, w in zip(_T, _W):
            # P(z > t) = P(s > x) with x = (t - gamma) / (zeta - gamma) in (0, 1) for t in (0, 1)
            x = (t - self.gamma) / (self.zeta - self.gamma)
            out += w * torch.sigmoid(la - self.beta * math.log(x / (1 - x)))
        return out

    @torch.no_grad()
    def deterministic(self) -> Tensor:
        """Eval gates z [M, P]: the round(density * P) largest-log_alpha coordinates of each
        expert keep their mean gate E[z] in (0, 1); every other gate is exactly 0."""
        M, P = self.log_alpha.shape
        keep = torch.round(self.expected_density() * P).long()  # [M] non-zero count per expert
        rank = self.log_alpha.argsort(dim=1, descending=True).argsort(dim=1)  # [M, P] 0 = largest
        mask = rank < keep.unsqueeze(1)  # [M, P]
        return torch.where(mask, self.mean_gate(), torch.zeros_like(self.log_alpha))

    @torch.no_grad()
    def density(self) -> Tensor:
        """Share of non-zero eval gates [M] (no gradient)."""
        return (self.deterministic() > 0).to(self.log_alpha.dtype).mean(dim=1)

    def penalty(self, tau: float, rho: float = 10.0, rate: float = 1.0) -> Tensor:
        """Augmented-Lagrangian sparsity penalty driving every expert's share of non-zero gates
        to tau (scalar). In training mode it first raises the multipliers by rate * (d - tau)."""
        assert 0.0 < tau <= 1.0, f"target share of non-zero gates tau must be in (0, 1], got {tau}"
        d = self.expected_density()  # [M]
        gap = d - tau  # [M]
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.multiplier += rate * gap.detach()
        return (self.multiplier * gap + 0.5 * rho * gap.pow(2)).mean()

    @torch.no_grad()
    def clip_(self) -> None:
        """Clamp log_alpha to [-clip, clip] (paper: [log 0.01, log 100]) so no gate saturates
        where its gradient vanishes; call after each optimizer step (or before each forward)."""
        self.log_alpha.clamp_(-self.clip, self.clip)
