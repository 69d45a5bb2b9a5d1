"""Gradient-free adaptation: integrate d theta/dt = drift(t, theta) from t = 0 to t = T.

A thin layer over `torchdiffeq.odeint`, the field's solver library: fixed grids for euler /
midpoint / rk4 (`steps` equal steps) and adaptive dopri5 (rtol/atol; `steps` then only sets the
output grid, and the drift may be evaluated a little past T before dense output interpolates
back). Euler runs as a plain loop, bit-identical to torchdiffeq's and cheaper per step (`_euler`
says why; `use_torchdiffeq=True` runs torchdiffeq's). Everything runs under
`torch.inference_mode()`: adaptation never needs gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from hyperflow.errors import UserError


@dataclass(frozen=True)
class Solver:
    method: str  # torchdiffeq method name
    order: int  # global error ~ (T / steps) ** order
    stages: int | None  # drift evaluations per step; None = adaptive (count measured)


SOLVERS: dict[str, Solver] = {
    "euler": Solver("euler", order=1, stages=1),
    "midpoint": Solver("midpoint", order=2, stages=2),
    "rk4": Solver("rk4", order=4, stages=4),  # torchdiffeq's 3/8-rule RK4
    "dopri5": Solver("dopri5", order=5, stages=None),
}


class _Counted:
    """Wraps the drift to count its evaluations (NFE)."""

    def __init__(self, drift: Callable[[Tensor, Tensor], Tensor]):
        self.drift, self.nfe = drift, 0

    def __call__(self, t: Tensor, theta: Tensor) -> Tensor:
        self.nfe += 1
        return self.drift(t, theta)


def _euler(drift: Callable[[Tensor, Tensor], Tensor], theta0: Tensor, grid: Tensor) -> Tensor:
    # torchdiffeq's fixed-grid Euler, op for op (dy = dt f(t0, y0); y1 = y0 + dy; the output at a
    # grid time is y1 itself), so the path is bit-identical (tests/hyperflow/test_solvers.py). Its
    # per-step wrapping, interpolation and time comparisons cost ~45 us a step, 0.9 ms of a
    # 20-step adaptation on this CPU: ~15% of the floor HyperFlow is held to (a plain forward
    # pass of the support set, ~5-6 ms) for no change in the result.
    path = theta0.new_empty(len(grid), *theta0.shape)  # [steps + 1, B, P]
    path[0] = theta = theta0
    for k in range(len(grid) - 1):
        t0 = grid[k]
        theta = theta + (grid[k + 1] - t0) * drift(t0, theta)
        path[k + 1] = theta
    return path


def time_grid(T: float, steps: int, like: Tensor) -> Tensor:
    """[steps + 1] times k T / steps (dtype and device of `like`): integrate's step and output
    grid, so a drift may precompute what depends on t alone at exactly these times."""
    # linspace hits t = T exactly
    return torch.linspace(0.0, float(T), steps + 1, dtype=like.dtype, device=like.device)


def integrate(
    drift: Callable[[Tensor, Tensor], Tensor],
    theta0: Tensor,
    T: float,
    steps: int,
    method: str = "euler",
    return_path: bool = False,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    stats: dict | None = None,
    use_torchdiffeq: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate drift(t scalar tensor, theta [B, P]) -> [B, P] from theta0 [B, P] over [0, T].

    Returns theta_T [B, P], or (theta_T, path [steps+1, B, P]) with path[k] at t = k T / steps.
    rtol/atol are used by "dopri5" only. If `stats` is a dict it receives "nfe" (drift
    evaluations actually made) and "method". use_torchdiffeq: Euler through torchdiffeq too.
    """
    if method not in SOLVERS:
        raise UserError(f"unknown solver {method!r}; choose one of {sorted(SOLVERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"solver steps must be an integer >= 1, got {steps!r}")
    if not T > 0:
        raise UserError(f"integration horizon T must be > 0, got {T!r}")
    assert theta0.is_floating_point(), f"theta0 must be floating point, got {theta0.dtype}"
    solver = SOLVERS[method]
    counted = _Counted(drift)
    grid = time_grid(T, steps, theta0)  # both the fixed step grid and the output grid
    with torch.inference_mode():  # fixed-grid methods ignore rtol/atol
        if method == "euler" and not use_torchdiffeq:
            path = _euler(counted, theta0, grid)
        else:
            path = odeint(counted, theta0, grid, rtol=rtol, atol=atol, method=solver.method)
    if stats is not None:
        stats.update(nfe=counted.nfe, method=method)
    return (path[-1], path) if return_path else path[-1]
