"""HyperFlow adaptation: integrate d theta/dt = h(theta, t | support) from theta_0, no gradients.

The drift network's task encoder sees the support set once; a few solver steps of the drift then
replace T Adam steps with backward passes through the target.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.storage import location
from hyperflow.adapt.line_search import line_search
from hyperflow.adapt.methods import Adapted
from hyperflow.bias import get_theta
from hyperflow.data.episodes import Episode
from hyperflow.drift import DriftNet, load_drift
from hyperflow.drift.compiled import euler as compiled_euler
from hyperflow.errors import UserError
from hyperflow.model import TargetModel
from hyperflow.solvers import integrate, time_grid


def find_drift_dirs(path: str | os.PathLike) -> dict[str, str]:
    """{interpolant: location} from a `hyperflow train` output or a directory (or prefix) of
    them, local or a URL; the values are what load_drift and the Ray actors are handed."""
    loc = location(path)
    if loc.exists("drift.json"):
        candidates = [loc]
    elif loc.local and not Path(loc.root).is_dir():
        raise UserError(f"--drift {os.fspath(path)!r} is not a directory")
    else:  # object stores have no directories: an empty or missing prefix is caught below
        candidates = [loc.child(name) for name in loc.list()]
    found: dict[str, str] = {}
    for d in candidates:
        if d.exists("drift.json"):
            interp = json.loads(d.read_bytes("drift.json"))["interpolant"]
            if interp in found:
                raise UserError(
                    f"two drift networks for interpolant {interp!r}: {found[interp]}, {d.url}"
                )
            found[interp] = d.url
    if not found:
        raise UserError(
            f"--drift {os.fspath(path)!r} holds no drift.json (run `hyperflow train` first)"
        )
    return found


def load_for_target(drift_dir: str, model: TargetModel) -> DriftNet:
    """Load a drift network and check it was trained for this target's bias layout."""
    net = load_drift(
        drift_dir, model.backbone, model.feature_dim, expected_layout_hash=model.layout.hash()
    )
    return net.eval()


@torch.inference_mode()
def adapted_theta(
    model: TargetModel,
    net: DriftNet,
    episode: Episode,
    steps: int,
    solver: str = "euler",
    return_path: bool = False,
    chunk: int = 0,
    compiled: bool = False,
) -> torch.Tensor:
    """theta_T [P] reached by `steps` solver steps of the drift from the model's own biases,
    or with return_path the whole path [steps+1, P] at t = k T / steps. chunk > 0: the support
    set goes through the encoder `chunk` images at a time (same result, less peak memory).
    compiled: the support pass and the Euler steps as torch.compile'd calls (drift/compiled.py;
    the steps with euler and theta_T only)."""
    support = [(model.preprocess(episode.support_x), episode.support_y)]
    task = net.encode_tasks(support, chunk, compiled)  # [1, D]
    theta0 = get_theta(model.backbone, model.layout).unsqueeze(0)  # [1, P]
    T = float(net.horizon)
    if compiled and solver == "euler" and not return_path and hasattr(net, "prepare"):
        prepared = net.prepare(task)
        rows = net.time_rows(prepared, time_grid(T, steps, theta0)[:-1])  # step k at t = k T/steps
        return compiled_euler(net, theta0, prepared, rows, T / steps)[0]
    drift = _drift(net, task, time_grid(T, steps, theta0))
    out = integrate(drift, theta0, T, steps, solver, return_path=return_path)
    return out[1][:, 0] if return_path else out[0]


def _drift(net: DriftNet, task, grid: torch.Tensor):
    # drift(t, theta [1, P]) for the solver. A DriftNet computes what does not change along the
    # path once: its task terms here, the time terms of every grid time [steps + 1] in one batch
    # (a stage time off the grid computes its own). Any other module is called as forward.
    if not hasattr(net, "prepare"):  # stand-ins that only implement forward(theta, t, task)
        return lambda t, theta: net(theta, t.reshape(1).expand(theta.shape[0]), task)
    prepared = net.prepare(task)
    rows = net.time_rows(prepared, grid)
    row_of = {float(t): k for k, t in enumerate(grid)}

    def drift(t: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        k = row_of.get(float(t))
        here = rows.row(k) if k is not None else net.time_rows(prepared, t.reshape(1))
        return net.velocity(theta, prepared, here)

    return drift


def adapt_hyperflow(
    model: TargetModel,
    net: DriftNet,
    episode: Episode,
    steps: int,
    solver: str = "euler",
    chunk: int = 0,
    scales: Sequence[float] = (),
    seed: int = 0,
    compiled: bool = False,
) -> Adapted:
    """HyperFlow adaptation; `predict(model, episode, adapted)` gives the query logits. With
    `scales`, theta_T is replaced by the point theta_0 + s (theta_T - theta_0) of lowest support
    loss over them (line_search; augmentation from `seed`), forward passes only. compiled: see
    adapted_theta."""
    theta = adapted_theta(model, net, episode, steps, solver, chunk=chunk, compiled=compiled)
    if scales:
        theta0 = get_theta(model.backbone, model.layout)  # [P]
        theta = line_search(model, episode, theta0, theta, scales, seed)[0]
    return Adapted(theta=theta)
