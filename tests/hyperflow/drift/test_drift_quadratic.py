"""End to end on a family with a known answer: gradient flow on quadratics.

L_c(theta) = 0.5 (theta - c)^T A (theta - c), A diagonal positive, has the gradient flow
theta(t) = c + exp(-A t) (theta_0 - c). Trajectories are recorded at t = 0..T, the drift is
conditioned on c (task = a fixed injective embedding of c), trained with drift_loss for a few
hundred steps and integrated with Euler from unseen (theta_0, c). Layers live on different
scales (x1, x0.3, x10) so the per-layer normalisation has to work.
"""

import pytest
import torch
from torch import nn

from hyperflow.drift import DriftConfig, DriftNet, Task, drift_loss, fit_normalizer_from_knots
from hyperflow.interpolants import INTERPOLANTS
from hyperflow.solvers import integrate

T, TRAIN_STEPS, BATCH, LR, TOLERANCE = 4, 400, 128, 6e-3, 0.2


class QuadraticFamily:
    def __init__(self, layout, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        P, index = layout.size, layout.layer_index()
        self.rate = torch.empty(P).uniform_(0.15, 0.6, generator=g)  # diag(A): a T in 0.6..2.4
        self.unit = torch.tensor([1.0, 0.3, 10.0])[index]  # per-layer scale of theta
        self.embed = torch.randn(P, 64, generator=g) / P**0.5 / self.unit[:, None]  # [P, D]

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """knots [n, T+1, P] of the exact flow and task embeddings [n, D] of their c."""
        c = torch.randn(n, self.rate.shape[0], generator=g) * self.unit
        theta0 = c + torch.randn(c.shape, generator=g) * self.unit
        decay = torch.exp(-self.rate * torch.arange(T + 1.0)[:, None])  # [T+1, P]
        return c[:, None] + decay * (theta0 - c)[:, None], c @ self.embed


@pytest.mark.parametrize("interpolant", sorted(INTERPOLANTS))
def test_learned_drift_reaches_the_true_endpoint(interpolant, layout_factory):
    layout = layout_factory([(8,), (16,), (2, 6)])  # P = 36 in 3 layers
    family = QuadraticFamily(layout)
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    net = DriftNet(
        layout,
        DriftConfig(size="small", interpolant=interpolant, site_stats=False),
        nn.Identity(),
        1,
        T,
    )
    fit_normalizer_from_knots(net, family.sample(2048, g)[0], interpolant, g)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=TRAIN_STEPS, pct_start=0.05)
    for _ in range(TRAIN_STEPS):
        knots, task = family.sample(BATCH, g)
        loss = drift_loss(net, knots, Task(task), interpolant, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    net.eval()
    knots, task = family.sample(256, torch.Generator().manual_seed(123))  # unseen theta_0 and c
    theta0, target = knots[:, 0], knots[:, -1]
    moved = (target - theta0).norm(dim=1)  # error of not moving at all

    def endpoint_error(task_: torch.Tensor) -> float:
        out = integrate(lambda t, theta: net(theta, t, Task(task_)), theta0, T, 20, "euler")
        return ((out - target).norm(dim=1) / moved).mean().item()

    error = endpoint_error(task)
    assert error < TOLERANCE, f"{interpolant}: relative endpoint error {error:.3f}"
    # the drift must use its condition: the wrong c leads somewhere else
    wrong = endpoint_error(task.roll(1, dims=0))
    assert wrong > 3 * error, f"{interpolant}: error {error:.3f} vs {wrong:.3f} with wrong c"
