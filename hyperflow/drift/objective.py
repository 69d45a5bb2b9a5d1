"""Flow-matching style objective: regress h(theta(t), t | task) onto an interpolant's velocity."""

from __future__ import annotations

import torch
from torch import Tensor

from hyperflow.drift.network import DriftNet
from hyperflow.drift.task import Task
from hyperflow.interpolants import interpolate


def drift_loss(
    net: DriftNet,
    knots: Tensor,
    task: Task,
    interpolant: str,
    generator: torch.Generator,
    theta_noise: float = 0.0,
) -> Tensor:
    """Scalar loss for trajectories knots [B, T+1, P] (T = net.horizon) and their B tasks.

    t ~ U[0, T] per trajectory from `generator`; the squared error of each layer is divided by
    that layer's velocity_scale^2 and the per-layer MSEs are averaged, so a 64-entry norm bias
    counts as much as a 3072-entry MLP bias.

    theta_noise > 0 moves theta(t) off the path by delta ~ N(0, (theta_noise * theta_scale_l)^2)
    and asks for the velocity that still ends at theta_T: v - delta / max(T - t, 1). Without it
    every training input lies on a path (all paths start at the same theta_0), the network is
    free to do anything a little off them, and Euler steps, which never stay exactly on a path,
    wander off: the noise teaches it to steer back.
    """
    B, T1, P = knots.shape
    assert T1 - 1 == net.horizon, f"knots span T={T1 - 1}, the net was built for {net.horizon}"
    knots = knots.to(net.theta_offset.dtype)  # stores may hold float16
    t = torch.rand(B, generator=generator, device=generator.device).to(knots.device) * (T1 - 1)
    theta, velocity = interpolate(interpolant, knots, t)  # [B, P] each
    if theta_noise > 0:
        eps = torch.randn(theta.shape, generator=generator, device=generator.device)
        delta = theta_noise * net.theta_scale[net.layer_index] * eps.to(theta.device)  # [B, P]
        remaining = (net.horizon - t).clamp_min(1.0).unsqueeze(1)  # [B, 1]
        theta, velocity = theta + delta, velocity - delta / remaining
    return normalised_error(net, net(theta, t, task), velocity)


def normalised_error(net: DriftNet, pred: Tensor, velocity: Tensor) -> Tensor:
    """drift_loss's measure of pred [B, P] against velocity [B, P]: the squared error over each
    layer's velocity_scale^2, averaged per layer, then over layers (a scalar)."""
    scale = net.velocity_scale[net.layer_index]  # [P]
    err = ((pred - velocity) / scale).pow(2).mean(dim=0)  # [P]
    L = net.velocity_scale.shape[0]
    per_layer = err.new_zeros(L).index_add(0, net.layer_index, err)  # [L] summed per layer
    per_layer = per_layer / torch.bincount(net.layer_index, minlength=L)  # [L] mean per layer
    return per_layer.mean()


@torch.no_grad()
def fit_normalizer_from_knots(
    net: DriftNet,
    knots: Tensor,
    interpolant: str,
    generator: torch.Generator,
    draws: int = 4,
    stats: Tensor | None = None,
) -> None:
    """Fit net's normalisers on `draws` random (theta(t), d theta/dt) per trajectory of a sample
    of knots [B, T+1, P], so the statistics match what drift_loss regresses on, and on the raw
    site statistics [B, K, P] of those trajectories' support sets if given."""
    B, T1, _ = knots.shape
    knots = knots.float()
    thetas, velocities = [], []
    for _ in range(draws):  # a loop over draws, not a copy of knots per draw (that is T x bigger)
        t = torch.rand(B, generator=generator, device=generator.device).to(knots.device)
        theta, velocity = interpolate(interpolant, knots, t * (T1 - 1))
        thetas.append(theta)
        velocities.append(velocity)
    net.fit_normalizer(torch.cat(velocities), torch.cat(thetas), stats)  # [draws B, P] each
