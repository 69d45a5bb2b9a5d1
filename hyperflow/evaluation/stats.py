"""Mean accuracy with a 95% confidence interval over episodes."""

from __future__ import annotations

import math


def mean_ci95(values: list[float]) -> dict:
    """{"mean", "ci95", "n"}: ci95 = 1.96 * sample std / sqrt(n) (normal approximation)."""
    n = len(values)
    assert n > 0, "no values to summarise"
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "ci95": 1.96 * math.sqrt(var / n), "n": n}
