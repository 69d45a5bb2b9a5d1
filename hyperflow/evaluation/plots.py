"""The evaluation's PNG plots: accuracy against adaptation time, and support loss along the path.

Each plot is returned as PNG bytes, for the caller to store wherever --out is (engine.storage).
"""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def plot_tradeoff(results: dict) -> bytes:
    """Held-out accuracy vs adaptation seconds per episode; HyperFlow lines marked by steps."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = defaultdict(list)  # interpolant method -> [(seconds, acc, steps)]
    for name, m in results["methods"].items():
        acc = m["heldout_mean"] if m["heldout_mean"] is not None else m["base_mean"]
        secs = max(m["adapt_seconds_per_episode"], 1e-5)  # direct adapts in ~0 s; log axis
        if m["solver_steps"] is not None:
            lines[name.split("@")[0]].append((secs, 100 * acc, m["solver_steps"]))
        else:
            ax.scatter([secs], [100 * acc], s=40, zorder=3)
            ax.annotate(name, (secs, 100 * acc), textcoords="offset points", xytext=(5, 4))
    for name, pts in sorted(lines.items()):
        pts.sort(key=lambda p: p[2])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for secs, acc, k in pts:
            ax.annotate(str(k), (secs, acc), textcoords="offset points", xytext=(3, -10), size=8)
    ax.set_xscale("log")
    ax.set_xlabel("adaptation seconds per episode (log)")
    heldout = any(m["heldout_mean"] is not None for m in results["methods"].values())
    ax.set_ylabel(f"{'held-out' if heldout else 'base'} mean accuracy (%)")
    ax.set_title("Accuracy vs adaptation cost (numbers: Euler steps)")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig, dpi=120)


def plot_loss_curves(curves: list[dict]) -> bytes:
    """One panel per domain: L(theta_t) / L(theta_0) against t / T for every method."""
    by_domain = defaultdict(list)
    for c in curves:
        by_domain[c["domain"]].append(c)
    n = max(1, len(by_domain))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colors: dict[str, str] = {}
    for ax, (domain, items) in zip(axes.flat, sorted(by_domain.items())):
        for item in items:
            for name, ys in sorted(item["curves"].items()):
                xs = [i / (len(ys) - 1) for i in range(len(ys))]
                color = colors.setdefault(name, f"C{len(colors)}")
                style = "--" if name == "bias_tuning" else "-"
                label = name if item is items[0] else None
                ax.plot(xs, ys, style, color=color, alpha=0.7, lw=1.2, label=label)
        ax.set_title(domain, fontsize=10)
        ax.set_xlabel("t / T")
        ax.set_ylabel("support loss / initial")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(by_domain) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Relative support loss along the adaptation path (Euler for HyperFlow)")
    fig.tight_layout()
    return _png(fig, dpi=110)


def _png(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
