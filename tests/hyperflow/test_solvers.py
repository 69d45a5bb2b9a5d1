import math

import pytest
import torch

from hyperflow.errors import UserError
from hyperflow.solvers import SOLVERS, integrate

A, T = 0.8, 2.0  # d theta/dt = -A theta on [0, T]


def decay(t, theta):
    return -A * theta


def endpoint_error(method: str, steps: int) -> float:
    theta0 = torch.linspace(0.5, 2.0, 6, dtype=torch.float64).reshape(2, 3)
    out = integrate(decay, theta0, T, steps, method)
    return (out - theta0 * math.exp(-A * T)).abs().max().item()


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_error_shrinks_at_the_expected_order(method):
    order = SOLVERS[method].order
    if SOLVERS[method].stages is None:  # adaptive: accuracy set by rtol/atol, not by steps
        for steps in (1, 4):
            assert endpoint_error(method, steps) < 1e-5
        return
    errors = [endpoint_error(method, s) for s in (4, 8, 16)]
    for coarse, fine in zip(errors, errors[1:]):
        observed = math.log2(coarse / fine)  # halving the step divides the error by 2^order
        assert observed > order - 0.3, f"{method}: errors {errors}, observed order {observed:.2f}"


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_path_shape_and_ends(method):
    theta0 = torch.randn(3, 5)
    out, path = integrate(decay, theta0, T, 7, method, return_path=True)
    assert path.shape == (8, 3, 5)
    assert torch.equal(path[0], theta0)
    assert torch.equal(path[-1], out)
    # path[k] sits at t = k T / steps on the exact solution (loosely, for Euler)
    exact = theta0 * math.exp(-A * T * 3 / 7)
    assert (path[3] - exact).abs().max() < 0.1 * exact.abs().max()


# drift evaluations per step of each fixed-grid solver (torchdiffeq's midpoint: 2; 3/8-rule RK4: 4)
STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}


@pytest.mark.parametrize("method", sorted(SOLVERS))
@pytest.mark.parametrize("steps", [1, 3, 5])
def test_nfe_is_the_number_of_drift_calls(method, steps):
    calls = []

    def drift(t, theta):
        calls.append(float(t))
        return decay(t, theta)

    stats = {}
    integrate(drift, torch.ones(1, 4), T, steps, method, stats=stats)
    assert stats["nfe"] == len(calls), "nfe counts exactly the calls that reached the drift"
    if method in STAGES:
        assert stats["nfe"] == STAGES[method] * steps
    else:  # adaptive: at least the 6 stages of one dopri5 step, and the count it really made
        assert stats["nfe"] >= 6
    assert stats["method"] == method


def test_euler_is_torchdiffeqs_bit_for_bit():
    # the plain Euler loop replaces torchdiffeq's for speed only (solvers._euler)
    theta0 = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))

    def drift(t, theta):
        return torch.sin(3 * theta) - 0.7 * t * theta

    for steps in (1, 4, 20):
        out, path = integrate(drift, theta0, T, steps, return_path=True)
        ref, ref_path = integrate(drift, theta0, T, steps, return_path=True, use_torchdiffeq=True)
        assert torch.equal(path, ref_path) and torch.equal(out, ref)


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_runs_without_autograd(method):
    weight = torch.nn.Parameter(torch.tensor(-0.5))
    seen = []

    def drift(t, theta):
        seen.append((torch.is_inference_mode_enabled(), float(t)))
        return weight * theta

    out = integrate(drift, torch.ones(2, 3), T, 4, method)
    assert not out.requires_grad
    assert all(inference for inference, _ in seen)
    # fixed grids stay inside [0, T]; dopri5 may step past T and interpolate back (dense output)
    t_max = T + 1e-6 if SOLVERS[method].stages else 1.2 * T
    assert all(0.0 <= t <= t_max for _, t in seen)


def test_euler_evaluates_on_the_uniform_grid():
    times = []
    integrate(lambda t, th: times.append(float(t)) or th, torch.ones(1, 1), 3.0, 4)
    assert times == pytest.approx([0.0, 0.75, 1.5, 2.25])


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_steps_are_user_errors(steps):
    with pytest.raises(UserError, match="steps"):
        integrate(decay, torch.ones(1, 2), T, steps)


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="'heun7'"):
        integrate(decay, torch.ones(1, 2), T, 4, "heun7")
