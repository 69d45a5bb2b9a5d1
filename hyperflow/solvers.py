"""Gradient-free adaptation: integrate d theta/dt = drift(t, theta) from t = 0 to t = T.

A thin layer over `torchdiffeq.odeint`, the field's solver library: fixed grids for euler /
midpoint / rk4 (`steps` equal steps) and adaptive dopri5 (rtol/atol; `steps` then only sets the
output grid, and the drift may be evaluated a little past T before dense output interpolates
back). Everything runs under `torch.inference_mode()`: adaptation never needs gradients.
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
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate drift(t scalar tensor, theta [B, P]) -> [B, P] from theta0 [B, P] over [0, T].

    Returns theta_T [B, P], or (theta_T, path [steps+1, B, P]) with path[k] at t = k T / steps.
    rtol/atol are used by "dopri5" only. If `stats` is a dict it receives "nfe" (drift
    evaluations actually made) and "method".
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
    # the grid is both the fixed step grid and the output grid: linspace hits t = T exactly
    grid = torch.linspace(0.0, float(T), steps + 1, dtype=theta0.dtype, device=theta0.device)
    with torch.inference_mode():  # fixed-grid methods ignore rtol/atol
        path = odeint(counted, theta0, grid, rtol=rtol, atol=atol, method=solver.method)
    if stats is not None:
        stats.update(nfe=counted.nfe, method=method)
    return (path[-1], path) if return_path else path[-1]
