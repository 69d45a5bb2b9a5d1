import pytest
import torch
from torch import nn

from hyperflow.drift import DriftConfig, DriftNet, Task, drift_loss, fit_normalizer_from_knots
from hyperflow.interpolants import INTERPOLANTS, interpolate

T = 3


def knots_for(layout, seed: int, layer_units: list[float]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    unit = torch.tensor(layer_units)[layout.layer_index()]  # [P]
    steps = torch.randn(6, T, layout.size, generator=g) * unit
    start = torch.randn(6, 1, layout.size, generator=g) * unit
    return torch.cat([start, start + steps.cumsum(1)], dim=1)  # [6, T+1, P]


def fitted_net(layout, knots, interpolant: str) -> DriftNet:
    torch.manual_seed(0)
    net = DriftNet(
        layout, DriftConfig(interpolant=interpolant, site_stats=False), nn.Identity(), 16, T
    )
    fit_normalizer_from_knots(net, knots, interpolant, torch.Generator().manual_seed(9))
    return net


@pytest.mark.parametrize("interpolant", sorted(INTERPOLANTS))
def test_loss_matches_a_per_layer_reference(layout, interpolant):
    knots = knots_for(layout, 0, [1.0, 0.1, 5.0, 1.0, 0.01])
    net, task = fitted_net(layout, knots, interpolant), Task(torch.randn(6, 64))
    loss = drift_loss(net, knots, task, interpolant, torch.Generator().manual_seed(3))
    t = torch.rand(6, generator=torch.Generator().manual_seed(3)) * T
    theta, velocity = interpolate(interpolant, knots, t)
    pred = net(theta, t, task)  # the same float32 ops on the same inputs as inside drift_loss
    # The reference is computed in float64 from these float32 predictions and targets, so only the
    # loss's own float32 rounding separates the two, whatever order the CPU's kernels sum in: each
    # term carries <= 5 u (difference, scaling, square); the sums of nonnegative terms over the
    # batch (6), a layer's coordinates (<= 16) and the layers (5), in any order, and the three
    # divisions add about 27 u more. 64 u (3.8e-6) leaves a factor 2.
    pred, velocity, scale = pred.detach().double(), velocity.double(), net.velocity_scale.double()
    per_layer = []
    for i, e in enumerate(layout.entries):
        sl = slice(e.offset, e.offset + e.numel)
        per_layer.append(((pred[:, sl] - velocity[:, sl]) ** 2).mean() / scale[i] ** 2)
    ref = torch.stack(per_layer).mean().item()
    rtol = 64 * 2.0**-24
    assert abs(loss.item() - ref) <= rtol * ref, (loss.item(), ref)
    # a plain mean over coordinates (layers weighted by their size) differs by 0.3-3%: far outside
    plain = ((pred - velocity) / scale[net.layer_index]).pow(2).mean().item()
    assert abs(plain - ref) > 100 * rtol * ref, "the tolerance cannot see per-layer weighting"


def test_loss_is_invariant_to_per_layer_units(layout):
    # a layer measured in other units (x1000) must count exactly as much as before
    interpolant = "piecewise_cubic"
    knots = knots_for(layout, 1, [1.0, 1.0, 1.0, 1.0, 1.0])
    rescale = torch.tensor([1.0, 1000.0, 1.0, 0.001, 1.0])[layout.layer_index()]
    task = Task(torch.randn(6, 64))
    losses = []
    for k in (knots, knots * rescale):
        net = fitted_net(layout, k, interpolant)
        losses.append(drift_loss(net, k, task, interpolant, torch.Generator().manual_seed(4)))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=0)


def test_loss_is_seeded_and_trains(layout):
    knots = knots_for(layout, 2, [1.0, 0.1, 5.0, 1.0, 0.01])
    net, task = fitted_net(layout, knots, "linear"), Task(torch.randn(6, 64))

    def loss(seed):
        return drift_loss(net, knots.half(), task, "linear", torch.Generator().manual_seed(seed))

    assert loss(0).item() == loss(0).item() != loss(1).item()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = loss(0).item()
    for step in range(60):
        opt.zero_grad()
        loss(step).backward()
        opt.step()
    assert loss(0).item() < 0.5 * first


def test_horizon_mismatch_is_caught(layout):
    knots = knots_for(layout, 0, [1.0] * 5)
    net = DriftNet(layout, DriftConfig(site_stats=False), nn.Identity(), 16, T + 1)
    with pytest.raises(AssertionError, match="T=3"):
        drift_loss(net, knots, Task(torch.randn(6, 64)), "linear", torch.Generator())


STEER_STEPS = 800


def _train_on_one_path(layout, theta_noise: float) -> tuple[DriftNet, torch.Tensor, Task]:
    # one straight path 0 -> 1 of every coordinate over [0, T]
    knots = torch.linspace(0, 1, T + 1)[None, :, None].expand(16, T + 1, layout.size).contiguous()
    net = fitted_net(layout, knots, "linear")
    task = Task(torch.zeros(16, 64))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(STEER_STEPS):
        loss = drift_loss(net, knots, task, "linear", g, theta_noise=theta_noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), knots, task


def test_theta_noise_teaches_the_drift_to_steer_back_to_the_path(layout):
    def endpoint_error(theta_noise: float) -> float:
        net, knots, task = _train_on_one_path(layout, theta_noise)
        theta = knots[:1, 0] + 0.1  # start a little off the path
        with torch.no_grad():
            for k in range(10):  # Euler over [0, T]
                t = torch.tensor([k * T / 10])
                theta = theta + (T / 10) * net(theta, t, Task(task.embedding[:1]))
        return (theta - knots[:1, -1]).abs().mean().item()

    plain, steered = endpoint_error(0.0), endpoint_error(0.5)
    assert steered < 0.5 * plain, f"endpoint error {steered:.3f} with noise vs {plain:.3f} without"
