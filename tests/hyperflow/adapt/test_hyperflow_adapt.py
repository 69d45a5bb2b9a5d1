"""HyperFlow adaptation wiring: adapted_theta integrates the drift from the model's own biases over
[0, horizon]; drift directories are found per interpolant and checked against the target.
(That a *trained* drift lowers the support loss is tests/jobs/test_train_adapt.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hyperflow.adapt.hyperflow import adapted_theta, find_drift_dirs, load_for_target
from hyperflow.bias import get_theta
from hyperflow.drift import DriftConfig, DriftNet, Task, save_drift
from hyperflow.drift.prepared import TimeRows
from hyperflow.errors import UserError
from hyperflow.model import TargetConfig, TargetModel
from hyperflow.solvers import integrate

HORIZON = 5.0


class _ClockDrift(nn.Module):
    """d theta/dt = a + b t for every coordinate, whatever the task: known integrals."""

    horizon = HORIZON

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b, self.tasks = a, b, 0

    def encode_tasks(self, supports, chunk=0, compiled=False):
        self.tasks += len(supports)
        return Task(torch.zeros(len(supports), 1))

    # the test-time interface of DriftNet: task terms once, time terms per time, then per step
    def prepare(self, task):
        return task

    def time_rows(self, prepared, t):
        return TimeRows(t.unsqueeze(1), [])  # [S, 1]: the time itself

    def velocity(self, theta, prepared, rows):
        assert rows.cond.shape == (theta.shape[0], 1) and len(prepared) == theta.shape[0]
        return (self.a + self.b * rows.cond).expand_as(theta)


def _drift_net(model: TargetModel, interpolant: str = "linear") -> DriftNet:
    net = DriftNet(
        model.layout,
        DriftConfig("small", "target", interpolant),
        model.backbone,
        model.feature_dim,
        HORIZON,
    )
    return net.eval()


def test_constant_drift_moves_theta_by_horizon_times_velocity(tiny_model, episodes):
    theta0 = get_theta(tiny_model.backbone, tiny_model.layout)
    drift = _ClockDrift(a=0.01, b=0.0)
    for steps in (1, 5):
        out = adapted_theta(tiny_model, drift, episodes[0], steps)
        torch.testing.assert_close(out, theta0 + HORIZON * 0.01)
    assert drift.tasks == 2, "the support set is encoded once per adaptation"


@pytest.mark.parametrize(("solver", "steps"), [("euler", 5), ("midpoint", 1), ("rk4", 2)])
def test_time_runs_from_zero_to_horizon(tiny_model, episodes, solver, steps):
    # d theta/dt = t: exact integral T^2 / 2; Euler's left sums give T^2 (n - 1) / (2 n)
    theta0 = get_theta(tiny_model.backbone, tiny_model.layout)
    out = adapted_theta(tiny_model, _ClockDrift(0.0, 1.0), episodes[0], steps, solver)
    exact = HORIZON**2 / 2 * ((steps - 1) / steps if solver == "euler" else 1.0)
    torch.testing.assert_close(out - theta0, torch.full_like(theta0, exact))


def test_zero_drift_net_returns_the_model_biases_and_leaves_the_model(tiny_model, episodes):
    model = copy.deepcopy(tiny_model)
    net = _drift_net(model)
    net.velocity_scale.zero_()  # the net's output is unit velocity x per-layer scale
    before = get_theta(model.backbone, model.layout).clone()
    out = adapted_theta(model, net, episodes[1], 5)
    assert torch.equal(out, before)
    assert torch.equal(get_theta(model.backbone, model.layout), before)


@pytest.mark.parametrize(
    ("solver", "steps", "compiled"),
    [("euler", 20, False), ("midpoint", 3, False), ("rk4", 2, False), ("euler", 12, True)],
)
def test_adapted_theta_equals_forward_at_every_step(tiny_model, episodes, solver, steps, compiled):
    # the precomputed / batched test-time drift against the straightforward one (forward at every
    # step through torchdiffeq), all in float64: they differ in op order only (~1e-15 relative).
    # compiled: Euler in compiled blocks of 10, here one and a remainder of 2 eager steps
    model = copy.deepcopy(tiny_model).double()
    net = _drift_net(model).double()
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised gates and local head: make them count
            p.copy_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    P = model.layout.size
    emb, stats = torch.randn(1, net.task_dim, generator=g), torch.randn(1, 3, P, generator=g)
    task = Task(emb.double(), stats.double())
    net.encode_tasks = lambda supports, chunk=0, compiled=False: (
        task
    )  # the encoder pass is not what is compared
    theta0 = get_theta(model.backbone, model.layout).unsqueeze(0)  # [1, P] float64
    out = adapted_theta(model, net, episodes[0], steps, solver, compiled=compiled)
    with torch.no_grad():
        ref = integrate(
            lambda t, th: net(th, t.reshape(1), task),
            theta0,
            HORIZON,
            steps,
            solver,
            use_torchdiffeq=True,
        )[0]
    assert out.dtype == torch.float64
    assert ((out - ref).abs() <= 1e-10 * (ref - theta0[0]).abs().max()).all()
    assert (ref - theta0[0]).abs().max() > 1e-3  # the drift moved theta: not a trivial match


def test_drift_dirs_are_found_per_interpolant(tiny_model, tmp_path):
    for interp in ("linear", "piecewise_cubic"):
        save_drift(_drift_net(tiny_model, interp), tmp_path / "runs" / interp)
    (tmp_path / "runs" / "notes").mkdir()  # no drift.json: ignored
    found = find_drift_dirs(tmp_path / "runs")
    assert found == {i: str(tmp_path / "runs" / i) for i in ("linear", "piecewise_cubic")}
    assert find_drift_dirs(tmp_path / "runs" / "linear") == {"linear": found["linear"]}

    save_drift(_drift_net(tiny_model, "linear"), tmp_path / "runs" / "linear-again")
    with pytest.raises(UserError, match="two drift networks for interpolant 'linear'"):
        find_drift_dirs(tmp_path / "runs")
    with pytest.raises(UserError, match="holds no drift.json"):
        find_drift_dirs(tmp_path / "runs" / "notes")


def test_drift_of_another_bias_layout_is_refused(tiny_model, tmp_path):
    save_drift(_drift_net(tiny_model), tmp_path / "d")
    net = load_for_target(str(tmp_path / "d"), tiny_model)
    assert not net.training
    other = TargetModel(TargetConfig(exclude=["*bn*"])).eval()
    with pytest.raises(UserError, match=f"trained for bias layout {tiny_model.layout.hash()}"):
        load_for_target(str(tmp_path / "d"), other)
