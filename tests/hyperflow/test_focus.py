"""hyperflow.focus: which candidates are kept, and the pool summary (no model needed)."""

from __future__ import annotations

import math

from hyperflow.focus import choose, focus_seed, summarize


def test_choose_keeps_the_highest_scores_ties_to_the_lower_index():
    scores = {10: 0.5, 11: 0.9, 12: 0.9, 13: 0.1, 14: math.inf, 15: 0.9}
    assert choose(scores, 1) == [14]
    assert choose(scores, 3) == [11, 12, 14]  # of the three 0.9s, the two lowest indices
    assert choose(scores, 10) == sorted(scores)


def test_summary_counts_shift_families():
    rows = [
        {"index": 1, "score": 1.0, "shift": "clean"},
        {"index": 2, "score": 3.0, "shift": "noise"},
        {"index": 3, "score": 2.0, "shift": "noise"},
    ]
    s = summarize(rows)
    assert (s["n"], s["mean"], s["median"], s["min"], s["max"]) == (3, 2.0, 2.0, 1.0, 3.0)
    assert s["shifts"] == {"clean": 1, "noise": 2}


def test_seeds_differ_per_episode_and_spec_seed():
    seeds = {focus_seed(s, e) for s in (0, 1) for e in range(50)}
    assert len(seeds) == 100
    assert focus_seed(0, 7) == focus_seed(0, 7)
