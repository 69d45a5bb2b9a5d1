"""Paired bootstrap intervals: what pairing buys, and that results carry what it needs."""

from __future__ import annotations

import numpy as np
import pytest

from hyperflow.evaluation.paired import paired_intervals, recovery_change, resampled_means
from hyperflow.evaluation.report import add_paired, markdown, summarize
from hyperflow.evaluation.scaling import summary_row
from hyperflow.evaluation.worker import MethodSpec

DOMAINS = {
    "latin": {"split": "base", "family": "clean"},
    "georgian-noise": {"split": "heldout", "family": "noise"},
    "hebrew-invert": {"split": "heldout", "family": "invert"},
}
HELD = ["georgian-noise", "hebrew-invert"]


def _rows(per_method: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """Evaluation rows (as EvalWorker.run returns them) from accuracies per method and domain."""
    return [
        {"domain": d, "index": i, "seed": 100 + i, "method": m, "acc": float(a), "seconds": 0.1}
        for m, per in per_method.items()
        for d, accs in per.items()
        for i, a in enumerate(accs)
    ]


def _results(per_method: dict[str, dict[str, np.ndarray]]) -> dict:
    methods = [MethodSpec(m, "direct" if m == "direct" else "bias_tuning") for m in per_method]
    header = {"episodes_per_domain": 40, "way": 5, "shot": 5, "seed": 0}
    return summarize(_rows(per_method), methods, DOMAINS, header, {})


def _noisy(seed: int, n: int = 40) -> dict[str, np.ndarray]:
    # episodes differ a lot in difficulty: an unpaired interval is wide
    rng = np.random.default_rng(seed)
    return {d: np.clip(rng.uniform(0.3, 0.9, n), 0, 1) for d in DOMAINS}


def _base(n: int = 40) -> dict[str, dict[str, np.ndarray]]:
    direct = _noisy(0, n)
    bias = {d: np.clip(a + 0.08, 0, 1) for d, a in direct.items()}
    return {"direct": direct, "bias_tuning": bias}


def test_a_method_equal_to_direct_gets_exactly_zero():
    base = _base()
    res = _results({**base, "same": base["direct"]})
    iv = paired_intervals(res, "same", HELD)
    assert (iv["diff"].mean, iv["diff"].lo, iv["diff"].hi) == (0.0, 0.0, 0.0)
    assert (iv["recovery"].mean, iv["recovery"].lo, iv["recovery"].hi) == (0.0, 0.0, 0.0)


def test_a_constant_gain_is_tight_and_excludes_zero_where_unpaired_would_not():
    base = _base()
    better = {d: a + 0.02 for d, a in base["direct"].items()}  # +2 points on every episode
    res = _results({**base, "better": better})
    iv = paired_intervals(res, "better", HELD)
    assert iv["diff"].mean == pytest.approx(0.02)
    assert iv["diff"].lo == pytest.approx(0.02) and iv["diff"].hi == pytest.approx(0.02)
    assert iv["diff"].excludes_zero()
    assert iv["recovery"].lo == pytest.approx(0.25) and iv["recovery"].hi == pytest.approx(0.25)
    # unpaired: the two methods' own intervals over the same domains overlap zero difference
    acc = res["methods"]
    se = [
        np.sqrt(sum((acc[m]["acc"][d]["ci95"] / 1.96) ** 2 for d in HELD)) / len(HELD)
        for m in ("direct", "better")
    ]
    assert 1.96 * np.hypot(*se) > 0.02, "unpaired, +2 points would not be told from noise"


def test_the_bootstrap_is_reproducible_from_its_seed_and_resamples_within_domains():
    base = _base()
    noisy = {d: np.clip(a + np.random.default_rng(3).normal(0.03, 0.05, len(a)), 0, 1)
             for d, a in base["direct"].items()}  # fmt: skip
    res = _results({**base, "hf": noisy})
    a, b = paired_intervals(res, "hf", HELD, seed=7), paired_intervals(res, "hf", HELD, seed=7)
    assert a == b
    c = paired_intervals(res, "hf", HELD, seed=8)
    assert c["diff"].mean == a["diff"].mean and c["diff"].lo != a["diff"].lo
    assert a["diff"].lo < a["diff"].mean < a["diff"].hi
    # a domain's replicates only ever draw that domain's episodes: one constant domain stays so
    tables = [{"x": np.full(5, 0.5), "y": np.arange(5.0)}]
    means = resampled_means(tables, resamples=50, seed=0)[0]
    assert means.shape == (50,) and np.all((means >= 0.25) & (means <= 2.25))


def test_no_gain_makes_recovery_unbounded_not_a_division_by_zero():
    base = _base()
    res = _results({"direct": base["direct"], "bias_tuning": base["direct"],
                    "hf": {d: a + 0.01 for d, a in base["direct"].items()}})  # fmt: skip
    iv = paired_intervals(res, "hf", HELD)
    assert iv["recovery"].mean is None and iv["recovery"].hi is None
    assert iv["diff"].mean == pytest.approx(0.01)


def test_results_keep_one_row_per_episode_and_the_report_shows_paired_intervals():
    base = _base(n=6)
    res = add_paired(_results({**base, "hf": base["bias_tuning"]}))
    rows = res["methods"]["hf"]["episodes"]
    assert len(rows) == 6 * len(DOMAINS)
    assert {(r["domain"], r["id"]) for r in rows} == {(d, i) for d in DOMAINS for i in range(6)}
    assert all(set(r) == {"id", "domain", "seed", "acc"} for r in rows)
    # the rows' mean is the reported mean
    for d in DOMAINS:
        accs = [r["acc"] for r in rows if r["domain"] == d]
        assert np.mean(accs) == pytest.approx(res["methods"]["hf"]["acc"][d]["mean"])
    assert res["paired"]["domains"] == HELD
    assert res["paired"]["methods"]["hf"]["recovery"]["mean"] == pytest.approx(1.0)
    text = markdown(res)
    assert "Paired 95% intervals" in text and "| hf | +8.0 | [+8.0, +8.0] | 100% |" in text


def test_results_without_rows_have_no_paired_interval_but_still_report():
    base = _base(n=6)
    res = _results({**base, "hf": base["bias_tuning"]})
    del res["methods"]["direct"]["episodes"]  # e.g. baselines copied from older results
    res = add_paired(res)
    assert res["paired"]["methods"]["hf"] is None
    assert "no per-episode rows" in markdown(res)
    row = summary_row(res, "hf", collected=["noise"])
    assert row["recovery_heldout"] == pytest.approx(1.0) and row["recovery_heldout_ci"] is None


def test_the_scaling_row_carries_a_paired_interval_per_group():
    base = _base()
    hf = {d: a + 0.04 for d, a in base["direct"].items()}
    row = summary_row(_results({**base, "hf": hf}), "hf", collected=["noise"])
    for group in ("heldout", "collected", "never"):
        ci = row[f"recovery_{group}_ci"]
        assert ci["mean"] == pytest.approx(row[f"recovery_{group}"])
        assert ci["lo"] <= ci["mean"] <= ci["hi"]


def test_a_change_of_recovery_between_two_points_is_paired_over_their_shared_episodes():
    base = _base()
    rng = np.random.default_rng(5)
    # the first point: direct plus noise of +-5 points per episode; the second: the same plus 2
    first = {
        d: np.clip(a + rng.normal(0.02, 0.05, len(a)), 0, 1) for d, a in base["direct"].items()
    }
    last = {d: a + 0.02 for d, a in first.items()}
    a, z = _results({**base, "hf": first}), _results({**base, "hf": last})
    up = recovery_change(a, z, "hf", HELD)
    # +2 points on every episode of an 8-point gain: exactly +25 recovery points, in every replicate
    assert up.mean == pytest.approx(0.25) and up.excludes_zero()
    assert up.lo == pytest.approx(0.25) and up.hi == pytest.approx(0.25)
    assert recovery_change(z, a, "hf", HELD).mean == pytest.approx(-0.25)
    # negative control: an unrelated draw of the same noise, no better on average, is not a change
    other = {
        d: np.clip(a + rng.normal(0.02, 0.05, len(a)), 0, 1) for d, a in base["direct"].items()
    }
    flat = recovery_change(a, _results({**base, "hf": other}), "hf", HELD)
    assert flat.lo < 0 < flat.hi, flat
    # a point evaluated against other baselines is not paired with the first: no interval
    moved = {**base, "bias_tuning": {d: v + 0.01 for d, v in base["bias_tuning"].items()}}
    assert recovery_change(a, _results({**moved, "hf": last}), "hf", HELD) is None
