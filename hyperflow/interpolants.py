"""Interpolants: continuous paths theta(t) through trajectory knots recorded at t = 0, 1, ..., T.

The drift network is regressed onto d theta/dt of one of these paths at random t, so each
interpolant defines a different regression target (and a different learned flow):

- "linear": the straight line theta_0 -> theta_T (a rectified-flow style target; ignores the
  intermediate knots, constant velocity).
- "piecewise_linear": through every knot, constant velocity per unit interval (C0).
- "piecewise_cubic": C1 cubic Hermite through every knot with monotone (PCHIP) tangents.

Everything is vectorised over the batch B and the parameter dimension P; only the (at most four)
knots around each query time are gathered, so memory is O(B P) whatever T is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hyperflow.errors import UserError


def _gather(knots: Tensor, idx: Tensor) -> Tensor:
    # knots [B, T+1, P], idx [B] int64 (already clamped to 0..T) -> [B, P]
    return knots[torch.arange(knots.shape[0], device=knots.device), idx]


def _segment(knots: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    # Unit interval [i, i+1] holding t, and the local coordinate s = t - i in [0, 1].
    # t == T falls in the last interval with s == 1 so that the endpoint knot is reproduced.
    T = knots.shape[1] - 1
    i = t.floor().long().clamp(0, T - 1)  # [B]
    s = (t - i.to(t.dtype)).unsqueeze(-1)  # [B, 1]
    return i, s


def _linear(knots: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    T = knots.shape[1] - 1
    velocity = (knots[:, -1] - knots[:, 0]) / T  # [B, P], constant in t
    # lerp is exact at both ends (start + w (end - start) is not at w = 1 in floating point)
    return torch.lerp(knots[:, 0], knots[:, -1], t.unsqueeze(-1) / T), velocity


def _piecewise_linear(knots: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    i, s = _segment(knots, t)
    left, right = _gather(knots, i), _gather(knots, i + 1)  # [B, P] each
    return torch.lerp(left, right, s), right - left  # unit spacing: slope = difference


def _harmonic_tangent(d_left: Tensor, d_right: Tensor) -> Tensor:
    # Interior PCHIP tangent for unit spacing: harmonic mean of the neighbouring slopes when they
    # share a sign, else 0 (a local extremum stays an extremum). |m| <= 2 min(|d_l|, |d_r|) keeps
    # the Fritsch-Carlson monotonicity condition without a separate limiting pass.
    prod = d_left * d_right
    same_sign = prod > 0
    denom = torch.where(same_sign, d_left + d_right, torch.ones_like(prod))
    return torch.where(same_sign, 2 * prod / denom, torch.zeros_like(prod))


def _end_tangent(d_near: Tensor, d_far: Tensor) -> Tensor:
    # PCHIP end condition: one-sided three-point slope (3 d_near - d_far) / 2, set to 0 if it
    # points against d_near and clipped to 3 d_near if the data turn, so the end piece is monotone.
    m = 0.5 * (3 * d_near - d_far)
    m = torch.where(m * d_near <= 0, torch.zeros_like(m), m)
    clip = (d_near * d_far < 0) & (m.abs() > 3 * d_near.abs())
    return torch.where(clip, 3 * d_near, m)


def _piecewise_cubic(knots: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    T = knots.shape[1] - 1
    i, s = _segment(knots, t)
    # knots i-1 .. i+2 (clamped) give the slopes d_{i-1}, d_i, d_{i+1} of the unit intervals
    k = [_gather(knots, (i + j).clamp(0, T)) for j in (-1, 0, 1, 2)]  # 4 x [B, P]
    d_prev, d_mid, d_next = k[1] - k[0], k[2] - k[1], k[3] - k[2]
    if T == 1:  # a single interval: the straight line is the only sensible Hermite piece
        m_left = m_right = d_mid
    else:
        first, last = (i == 0).unsqueeze(-1), (i + 1 == T).unsqueeze(-1)  # [B, 1]
        m_left = torch.where(first, _end_tangent(d_mid, d_next), _harmonic_tangent(d_prev, d_mid))
        m_right = torch.where(last, _end_tangent(d_mid, d_prev), _harmonic_tangent(d_mid, d_next))
    s2, s3 = s * s, s * s * s
    # cubic Hermite basis on [0, 1] (unit spacing, so tangents need no rescaling) and derivatives
    h00, h10, h01, h11 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, -2 * s3 + 3 * s2, s3 - s2
    g00, g10, g01, g11 = 6 * s2 - 6 * s, 3 * s2 - 4 * s + 1, -6 * s2 + 6 * s, 3 * s2 - 2 * s
    theta = h00 * k[1] + h10 * m_left + h01 * k[2] + h11 * m_right
    velocity = g00 * k[1] + g10 * m_left + g01 * k[2] + g11 * m_right
    return theta, velocity


INTERPOLANTS: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "linear": _linear,
    "piecewise_linear": _piecewise_linear,
    "piecewise_cubic": _piecewise_cubic,
}


def check_interpolant(name: str) -> None:
    """Raise UserError unless `name` is a key of INTERPOLANTS."""
    if name not in INTERPOLANTS:
        raise UserError(f"unknown interpolant {name!r}; choose one of {sorted(INTERPOLANTS)}")


def interpolate(name: str, knots: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """theta(t) and d theta/dt of the named interpolant through trajectory knots.

    knots [B, T+1, P] are recorded at integer times 0..T (T >= 1); t [B] float in [0, T].
    Returns (theta [B, P], velocity [B, P]) in the dtype of `knots`.

    "piecewise_cubic" uses monotone PCHIP tangents (Fritsch-Carlson / Fritsch-Butland): a
    per-coordinate Adam path is mostly monotone with occasional momentum turns, and PCHIP never
    overshoots the knots between them, whereas Catmull-Rom central differences overshoot at every
    turn and invent velocities (and drift targets) the optimiser never had. Tangents are 0 at
    local extrema and the ends use the one-sided shape-preserving three-point rule.
    At an interior knot "piecewise_linear" returns the velocity of the interval to the right.
    """
    check_interpolant(name)
    assert knots.dim() == 3, f"knots must be [B, T+1, P], got shape {tuple(knots.shape)}"
    assert knots.shape[1] >= 2, f"need at least two knots (T >= 1), got {knots.shape[1]}"
    assert knots.is_floating_point(), f"knots must be floating point, got {knots.dtype}"
    assert t.shape == knots.shape[:1], f"t must be [B={knots.shape[0]}], got {tuple(t.shape)}"
    T = knots.shape[1] - 1
    assert bool(((t >= 0) & (t <= T)).all()), f"t must lie in [0, {T}], got {t.min()}..{t.max()}"
    return INTERPOLANTS[name](knots, t.to(knots.dtype))
