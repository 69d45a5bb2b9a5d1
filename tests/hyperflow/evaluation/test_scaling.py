"""The scaling curve's numbers: groups of held-out domains, their interval, gain recovered."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from hyperflow.evaluation.scaling import (
    curve_figure,
    group_mean,
    heldout_groups,
    plot_curve,
    summary_row,
)


def _results(acc: dict[str, dict[str, float]], ci: float = 0.02) -> dict:
    domains = {
        "latin": {"split": "base", "family": "clean"},
        "georgian-noise": {"split": "heldout", "family": "noise"},
        "arabic-contrast": {"split": "heldout", "family": "contrast"},
        "hebrew-invert": {"split": "heldout", "family": "invert"},
    }
    return {
        "domains": domains,
        "methods": {
            m: {"acc": {d: {"mean": v, "ci95": ci, "n": 80} for d, v in per.items()}}
            for m, per in acc.items()
        },
    }


BASE = {
    "direct": {"latin": 0.99, "georgian-noise": 0.80, "arabic-contrast": 0.30,
               "hebrew-invert": 0.7},
    "bias_tuning": {"latin": 0.99, "georgian-noise": 0.90, "arabic-contrast": 0.50,
                    "hebrew-invert": 0.8},
}  # fmt: skip


def test_groups_split_heldout_domains_by_whether_their_family_was_collected():
    groups = heldout_groups(_results(BASE), collected=["noise", "contrast", "blur"])
    assert groups == {
        "heldout": ["georgian-noise", "arabic-contrast", "hebrew-invert"],
        "collected": ["georgian-noise", "arabic-contrast"],
        "never": ["hebrew-invert"],
    }


def test_a_procedural_store_covers_every_family_but_the_held_out_ones():
    groups = heldout_groups(_results(BASE), collected=["procedural"])
    assert groups["collected"] == ["georgian-noise", "arabic-contrast"]
    assert groups["never"] == ["hebrew-invert"]  # as for a store of the named families


def test_recovery_reads_where_a_method_sits_between_direct_and_bias_tuning():
    # halfway on the collected domains (+0.05 and +0.10 of +0.10 and +0.20), nothing on invert
    hf = {"latin": 0.99, "georgian-noise": 0.85, "arabic-contrast": 0.40, "hebrew-invert": 0.7}
    row = summary_row(_results({**BASE, "hf": hf}), "hf", collected=["noise", "contrast"])
    assert row["recovery_collected"] == pytest.approx(0.5)
    assert row["recovery_never"] == pytest.approx(0.0)
    assert row["recovery_heldout"] == pytest.approx(0.15 / 0.4)
    assert row["heldout"] == pytest.approx((0.85 + 0.40 + 0.7) / 3)
    # bias-tuning itself recovers all of its gain; direct none of it
    assert summary_row(_results(BASE), "bias_tuning", ["noise"])["recovery_heldout"] == 1.0
    assert summary_row(_results(BASE), "direct", ["noise"])["recovery_heldout"] == 0.0


def test_no_gain_to_recover_is_none_not_a_division_by_zero():
    flat = {m: {d: 0.5 for d in BASE["direct"]} for m in BASE}
    row = summary_row(_results({**flat, "hf": flat["direct"]}), "hf", collected=["noise"])
    assert row["recovery_heldout"] is None and row["recovery_collected"] is None


def test_the_interval_of_a_mean_over_more_domains_is_narrower():
    # four domains with the same per-domain interval: the mean's interval halves (1 / sqrt(4))
    res = _results(BASE, ci=0.04)
    one = group_mean(res, "direct", ["georgian-noise"])[1]
    three = group_mean(res, "direct", ["georgian-noise", "arabic-contrast", "hebrew-invert"])[1]
    assert one == pytest.approx(0.04)
    assert three == pytest.approx(0.04 / 3**0.5)


def test_the_curve_has_one_line_per_size_per_group_with_its_points():
    # rows out of order (larger size first, more records first), one None (no never-collected
    # domain at 300): each line must still be one size's points, sorted by records, in percent
    rows = [
        {"size": size, "params": params, "records": n, "recovery_heldout": h,
         "recovery_collected": c, "recovery_never": nv}
        for size, params, n, h, c, nv in (
            ("large", 9e6, 600, 0.6, 0.7, 0.5),
            ("small", 5e5, 600, 0.3, 0.4, 0.1),
            ("large", 9e6, 300, 0.4, 0.5, None),
            ("small", 5e5, 300, 0.2, 0.25, -0.1),
        )
    ]  # fmt: skip
    want = {  # panel -> label -> (records, % recovered)
        "all held-out": {"small (0.5M)": ([300, 600], [20, 30]),
                         "large (9.0M)": ([300, 600], [40, 60])},
        "collected": {"small (0.5M)": ([300, 600], [25, 40]),
                      "large (9.0M)": ([300, 600], [50, 70])},
        "never collected": {"small (0.5M)": ([300, 600], [-10, 10]),
                            "large (9.0M)": ([600], [50])},
    }  # fmt: skip
    fig = curve_figure(rows, "hyperflow_cubic@20")
    try:
        axes = fig.get_axes()
        assert [ax.get_title() for ax in axes] == list(want)
        for ax in axes:
            got = {
                line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                for line in ax.get_lines()
            }
            assert len(ax.get_lines()) == len(got) == 2, ax.get_title()
            assert list(got) == list(want[ax.get_title()]), "sizes by parameter count"
            for label, (x, y) in want[ax.get_title()].items():
                assert got[label][0] == x, (ax.get_title(), label)
                assert got[label][1] == pytest.approx(y), (ax.get_title(), label)
            assert ax.get_xscale() == "log"
        assert "hyperflow_cubic@20" in axes[0].get_ylabel()
        assert [t.get_text() for t in axes[0].get_legend().get_texts()] == list(want["collected"])
    finally:
        plt.close(fig)
    png = plot_curve(rows, "hyperflow_cubic@20")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
