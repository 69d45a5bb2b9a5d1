"""Means with 95% intervals: over episodes (normal approximation) and over training seeds
(Student's t, for the few seeds a sweep trains)."""

from __future__ import annotations

import math


def mean_ci95(values: list[float]) -> dict:
    """{"mean", "ci95", "n"}: ci95 = 1.96 * sample std / sqrt(n) (normal approximation)."""
    n = len(values)
    assert n > 0, "no values to summarise"
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "ci95": 1.96 * math.sqrt(var / n), "n": n}


def over_seeds(values: list[float | None]) -> dict | None:
    """{"mean", "lo", "hi", "n"}: the mean of one quantity measured once per training seed, with
    its two-sided 95% Student-t interval over seeds (n - 1 degrees of freedom): the seed, not the
    episode, as the unit of chance. None unless there are >= 2 values and all are finite (a
    recovery is None or infinite where bias-tuning gains nothing)."""
    if len(values) < 2 or any(v is None or not math.isfinite(v) for v in values):
        return None
    from scipy import stats  # here: ~0.9 s to import, and every evaluation imports this module

    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}
