"""Intervals over episodes and over training seeds (hyperflow/evaluation/stats.py)."""

from __future__ import annotations

import math
import random

import pytest

from hyperflow.evaluation.stats import mean_ci95, over_seeds


def test_two_seeds_get_the_t_tables_width_not_the_normal_one():
    # n = 2: sd = sqrt(2), se = 1; the t quantile at 1 df is 12.706 (any t table), 1.96 normal
    iv = over_seeds([1.0, 3.0])
    assert iv["mean"] == 2.0 and iv["n"] == 2
    assert iv["hi"] - 2.0 == pytest.approx(12.706, abs=1e-3)
    assert iv["lo"] == pytest.approx(2.0 - 12.706, abs=1e-3)


def test_the_seed_interval_covers_the_true_mean_95_percent_of_the_time_at_three_seeds():
    # what the interval is for: with 3 seeds a normal-approximation interval covers ~80%
    rng = random.Random(0)
    trials, covered, normal = 4000, 0, 0
    for _ in range(trials):
        values = [rng.gauss(0.1, 0.05) for _ in range(3)]
        iv = over_seeds(values)
        covered += iv["lo"] <= 0.1 <= iv["hi"]
        half = mean_ci95(values)["ci95"]
        normal += abs(iv["mean"] - 0.1) <= half
    assert 0.93 <= covered / trials <= 0.97, covered / trials
    assert normal / trials < 0.85, "the normal interval should under-cover at 3 seeds"


@pytest.mark.parametrize("values", [[0.1], [], [0.1, None], [0.1, math.inf]])
def test_no_seed_interval_from_one_seed_or_an_unbounded_change(values):
    assert over_seeds(values) is None
