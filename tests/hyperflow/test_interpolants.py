import pytest
import torch

from hyperflow.errors import UserError
from hyperflow.interpolants import INTERPOLANTS, interpolate

B, T, P = 4, 5, 7


def adam_like_knots(seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """[B, T+1, P]: mostly monotone per-coordinate paths with a few turns, varied scales."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.rand(B, T, P, generator=g, dtype=dtype) + 0.1  # positive increments
    steps = steps * torch.where(torch.rand(B, 1, P, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    flip = torch.rand(B, T, P, generator=g) < 0.2  # occasional momentum turns
    steps = torch.where(flip, -0.5 * steps, steps)
    scale = 10.0 ** torch.randint(-3, 1, (1, 1, P), generator=g).to(dtype)
    start = torch.randn(B, 1, P, generator=g, dtype=dtype)
    return torch.cat([start, start + torch.cumsum(steps, 1)], dim=1) * scale


@pytest.mark.parametrize("name", sorted(INTERPOLANTS))
def test_reproduces_knots(name):
    knots = adam_like_knots()
    times = [0, T] if name == "linear" else range(T + 1)
    for k in times:
        theta, _ = interpolate(name, knots, torch.full((B,), float(k), dtype=torch.float64))
        torch.testing.assert_close(theta, knots[:, k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(INTERPOLANTS))
def test_derivative_matches_central_differences(name):
    knots = adam_like_knots(1)
    h = 1e-6
    for frac in (0.13, 0.5, 0.87):
        # a different interval per batch row, away from the knots
        t = torch.tensor([0.0, 1.0, 3.0, T - 1.0], dtype=torch.float64) + frac
        _, velocity = interpolate(name, knots, t)
        plus, _ = interpolate(name, knots, t + h)
        minus, _ = interpolate(name, knots, t - h)
        torch.testing.assert_close(velocity, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(INTERPOLANTS))
def test_exact_ends_and_dtype(name):
    knots = adam_like_knots(2).float()
    for t, k in ((0.0, 0), (float(T), T)):
        theta, velocity = interpolate(name, knots, torch.full((B,), t))
        assert theta.shape == velocity.shape == (B, P)
        assert theta.dtype == velocity.dtype == torch.float32
        assert torch.equal(theta, knots[:, k]), "endpoint knot must be hit exactly"
        assert torch.isfinite(velocity).all()


@pytest.mark.parametrize("name", sorted(INTERPOLANTS))
def test_batched_equals_per_row(name):
    # vectorised gathering must not mix rows: each row at its own time
    knots = adam_like_knots(3)
    t = torch.tensor([0.2, 2.5, 4.9, 3.0], dtype=torch.float64)
    theta, velocity = interpolate(name, knots, t)
    for b in range(B):
        th_b, v_b = interpolate(name, knots[b : b + 1], t[b : b + 1])
        torch.testing.assert_close(theta[b], th_b[0])
        torch.testing.assert_close(velocity[b], v_b[0])


def test_linear_derivative_is_constant():
    knots = adam_like_knots(4)
    expected = (knots[:, -1] - knots[:, 0]) / T
    for t in (0.0, 0.7, 2.0, 4.3, float(T)):
        _, velocity = interpolate("linear", knots, torch.full((B,), t, dtype=torch.float64))
        torch.testing.assert_close(velocity, expected)


@pytest.mark.parametrize("name,c1", [("piecewise_cubic", True), ("piecewise_linear", False)])
def test_c1_at_interior_knots(name, c1):
    knots = adam_like_knots(5)
    eps = 1e-7
    for k in range(1, T):
        _, left = interpolate(name, knots, torch.full((B,), k - eps, dtype=torch.float64))
        _, right = interpolate(name, knots, torch.full((B,), k + eps, dtype=torch.float64))
        gap = (left - right).abs().max().item()
        assert (gap < 1e-5) == c1, f"t={k}: left/right derivative gap {gap}"


def test_cubic_does_not_overshoot_monotone_data():
    # PCHIP property: on every interval theta(t) stays between its two knots
    knots = adam_like_knots(6)
    t = torch.linspace(0, T, 201, dtype=torch.float64)
    for tt in t:
        theta, _ = interpolate("piecewise_cubic", knots, tt.expand(B))
        i = min(int(tt), T - 1)
        lo = torch.minimum(knots[:, i], knots[:, i + 1])
        hi = torch.maximum(knots[:, i], knots[:, i + 1])
        assert bool(((theta >= lo - 1e-12) & (theta <= hi + 1e-12)).all()), f"overshoot at {tt}"


def test_cubic_on_one_interval_is_the_line():
    knots = adam_like_knots(7)[:, :2]
    t = torch.tensor([0.0, 0.3, 0.6, 1.0], dtype=torch.float64)
    for name in ("piecewise_linear", "piecewise_cubic"):
        theta, velocity = interpolate(name, knots, t)
        ref_theta, ref_velocity = interpolate("linear", knots, t)
        torch.testing.assert_close(theta, ref_theta)
        torch.testing.assert_close(velocity, ref_velocity)


def test_unknown_name_is_a_user_error():
    with pytest.raises(UserError, match="'spline'"):
        interpolate("spline", adam_like_knots(), torch.zeros(B, dtype=torch.float64))
