"""The scaling curve's numbers: held-out accuracy, its interval, and the share of bias-tuning's gain
that a method recovers, per group of shift families (collected vs never collected).

Gain recovered over a group of domains = (method - direct) / (bias_tuning - direct), each term the
mean of the group's per-domain means. Its 95% interval comes from a paired bootstrap over the
episodes all three methods share (paired.py); results without per-episode rows have none.
"""

from __future__ import annotations

import io
import math
from statistics import fmean

import matplotlib

from hyperflow.data.procedural import PROCEDURAL_NAME
from hyperflow.evaluation.paired import paired_intervals
from hyperflow.heldout import HELD_OUT_SHIFTS

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def heldout_groups(results: dict, collected: list[str]) -> dict[str, list[str]]:
    """{"heldout": all held-out domains, "collected": those whose shift family trajectories were
    collected under, "never": the rest}, from results.json's domain table.

    A store collected under `procedural` counts every family but the held-out ones (invert,
    clutter, elastic) as collected in kind: its primitives include noises, blurs, contrast and
    dilation, never those three. So "never" means the same domains for both kinds of store."""
    held = [d for d, v in results["domains"].items() if v["split"] == "heldout"]
    if not held:
        raise ValueError("results have no held-out domains: nothing to measure recovery on")
    fam = {d: results["domains"][d].get("family") for d in held}

    def covered(family: str) -> bool:
        return family in collected or (
            PROCEDURAL_NAME in collected and family not in HELD_OUT_SHIFTS
        )

    return {
        "heldout": held,
        "collected": [d for d in held if covered(fam[d])],
        "never": [d for d in held if not covered(fam[d])],
    }


def group_mean(results: dict, method: str, domains: list[str]) -> tuple[float, float]:
    """(mean of the domains' mean accuracies, its 95% half-interval), both in [0, 1].

    Domains are independent samples of episodes, so the variance of the mean of their means is
    the sum of their squared standard errors over len(domains)^2.
    """
    acc = results["methods"][method]["acc"]
    missing = [d for d in domains if d not in acc]
    assert not missing, f"{method} has no results on {missing}"
    mean = sum(acc[d]["mean"] for d in domains) / len(domains)
    se2 = sum((acc[d]["ci95"] / 1.96) ** 2 for d in domains)
    return mean, 1.96 * math.sqrt(se2) / len(domains)


def recovery(results: dict, method: str, domains: list[str]) -> float | None:
    """Share of bias-tuning's gain over direct transfer that `method` recovers on `domains`
    (None when bias-tuning gains nothing there)."""
    direct = group_mean(results, "direct", domains)[0]
    gain = group_mean(results, "bias_tuning", domains)[0] - direct
    if gain <= 0:
        return None
    return (group_mean(results, method, domains)[0] - direct) / gain


def summary_row(results: dict, method: str, collected: list[str]) -> dict:
    """Held-out accuracy with its interval and recovery per group, for one method's results."""
    groups = heldout_groups(results, collected)
    mean, ci = group_mean(results, method, groups["heldout"])
    row = {"heldout": mean, "heldout_ci95": ci}
    for name, domains in groups.items():
        row[f"recovery_{name}"] = recovery(results, method, domains) if domains else None
        iv = paired_intervals(results, method, domains) if domains else None
        # {"mean", "lo", "hi"}: paired 95% interval of the recovery, None without rows
        row[f"recovery_{name}_ci"] = iv["recovery"].to_dict() if iv else None
    return row


def curve_figure(rows: list[dict], method: str) -> plt.Figure:
    """Recovery against trajectories (log axis), one line per drift size through the mean over
    training seeds (each seed a dot when there are several), one panel per group (all held-out,
    collected families, never-collected families). The caller closes it."""
    panels = [("heldout", "all held-out"), ("collected", "collected"), ("never", "never collected")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
    sizes = sorted(
        {r["size"] for r in rows}, key=lambda s: min(x["params"] for x in rows if x["size"] == s)
    )
    for ax, (key, title) in zip(axes, panels):
        for size in sizes:
            # N -> that N's recoveries, one per training seed (None: no gain to recover)
            by_n: dict[int, list[float]] = {}
            for r in rows:
                if r["size"] == size and r[f"recovery_{key}"] is not None:
                    by_n.setdefault(r["records"], []).append(100 * r[f"recovery_{key}"])
            ns = sorted(by_n)
            params = next(r["params"] for r in rows if r["size"] == size)
            label = f"{size} ({params / 1e6:.1f}M)"
            (line,) = ax.plot(ns, [fmean(by_n[n]) for n in ns], marker="o", label=label)
            if any(len(v) > 1 for v in by_n.values()):  # several seeds: each as a faint dot
                xs, ys = zip(*[(n, v) for n in ns for v in by_n[n]])
                ax.scatter(xs, ys, s=12, alpha=0.4, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel("trajectories")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"% of bias-tuning's gain ({method})")
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_curve(rows: list[dict], method: str) -> bytes:
    """PNG of curve_figure."""
    fig = curve_figure(rows, method)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
