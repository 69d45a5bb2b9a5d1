"""Turn evaluation rows into results.json (DESIGN section 5) and a markdown table.

Beyond section 5, each method keeps its per-episode accuracies ("episodes": [{"id", "domain",
"seed", "acc"}], id = the episode's index within its domain, seed = the episode's seed) and the
results hold "paired": each method's difference to direct transfer and its recovery of
bias-tuning's gain on the held-out domains, with paired bootstrap 95% intervals (paired.py).
"""

from __future__ import annotations

import json
from collections import defaultdict

from engine.storage import Location
from hyperflow.evaluation.paired import RESAMPLES, SEED, paired_intervals
from hyperflow.evaluation.stats import mean_ci95
from hyperflow.evaluation.worker import MethodSpec


def summarize(
    rows: list[dict],
    methods: list[MethodSpec],
    domains: dict[str, dict],
    header: dict,
    memory: dict[str, dict],
) -> dict:
    """rows: one per (episode, method) with acc and seconds; domains: name -> {"split", ...};
    memory: method -> {"bytes", "device"} from EvalWorker.memory."""
    acc = defaultdict(lambda: defaultdict(list))
    secs = defaultdict(list)
    episodes = defaultdict(list)
    order = {d: i for i, d in enumerate(domains)}
    for r in sorted(rows, key=lambda r: (r["method"], order[r["domain"]], r["index"])):
        acc[r["method"]][r["domain"]].append(r["acc"])
        secs[r["method"]].append(r["seconds"])
        row = {"id": r["index"], "domain": r["domain"], "seed": r.get("seed"), "acc": r["acc"]}
        episodes[r["method"]].append(row)
    out = {**header, "domains": domains, "methods": {}}
    for m in methods:
        per_domain = {d: mean_ci95(acc[m.name][d]) for d in domains if acc[m.name][d]}
        out["methods"][m.name] = {
            "acc": per_domain,
            "base_mean": _split_mean(per_domain, domains, "base"),
            "heldout_mean": _split_mean(per_domain, domains, "heldout"),
            "adapt_seconds_per_episode": sum(secs[m.name]) / max(1, len(secs[m.name])),
            "peak_memory_bytes": memory.get(m.name, {}).get("bytes"),
            "memory_device": memory.get(m.name, {}).get("device"),
            "solver_steps": m.steps if m.kind == "hyperflow" else None,
            "step_scales": list(m.scales) or None,  # line-search scales (hyperflow_*_ls)
            # cost in floors: support-set forward passes (None: also backward passes)
            "support_forwards": m.support_forwards(),
            "lr": m.lr if m.kind not in ("hyperflow", "direct", "smat") else None,
            "episodes": episodes[m.name],
        }
    return out


def add_paired(results: dict, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """results with "paired": every method's difference to direct and recovery on the held-out
    domains (all domains if none is held-out), {"mean", "lo", "hi"} each; a method whose rows are
    missing (copied from results written before rows were kept) gets null."""
    doms = results["domains"]
    group = [d for d in doms if doms[d]["split"] == "heldout"] or list(doms)
    methods = {}
    if "direct" in results["methods"] and "bias_tuning" in results["methods"]:
        for name in results["methods"]:
            iv = paired_intervals(results, name, group, resamples, seed)
            methods[name] = {k: v.to_dict() for k, v in iv.items()} if iv else None
    paired = {"domains": group, "resamples": resamples, "seed": seed, "methods": methods}
    return {**results, "paired": paired}


def _split_mean(per_domain: dict, domains: dict, split: str) -> float | None:
    vals = [v["mean"] for d, v in per_domain.items() if domains[d]["split"] == split]
    return sum(vals) / len(vals) if vals else None


def markdown(results: dict) -> str:
    """Per-domain accuracy (mean +- 95% CI, in %) with split averages and cost columns."""
    domains = list(results["domains"])
    head = ["method"] + [f"{d} ({results['domains'][d]['split']})" for d in domains]
    head += ["base", "held-out", "s/episode", "peak MB", "floors"]
    lines = [
        f"{results['way']}-way {results['shot']}-shot, {results['episodes_per_domain']} episodes "
        f"per domain, seed {results['seed']}; accuracy in % with 95% confidence intervals.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, m in results["methods"].items():
        cells = [name]
        for d in domains:
            a = m["acc"].get(d)
            cells.append(f"{100 * a['mean']:.1f} ± {100 * a['ci95']:.1f}" if a else "-")
        for key in ("base_mean", "heldout_mean"):
            cells.append(f"{100 * m[key]:.1f}" if m[key] is not None else "-")
        cells.append(f"{m['adapt_seconds_per_episode']:.4f}")
        mem = m["peak_memory_bytes"]
        cells.append(f"{mem / 2**20:.1f}" if mem is not None else "-")
        floors = m.get("support_forwards")  # absent from results written before it existed
        cells.append(str(floors) if floors is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + _paired_lines(results.get("paired"))) + "\n"


def _paired_lines(paired: dict | None) -> list[str]:
    if not paired or not paired["methods"]:
        return []
    pts = lambda v: "-" if v is None else f"{100 * v:+.1f}"  # noqa: E731
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    lines = [
        "",
        f"Paired 95% intervals on {', '.join(paired['domains'])} (mean of domain means; "
        f"bootstrap over episodes within each domain, {paired['resamples']} resamples, seed "
        f"{paired['seed']}; '-': unbounded or not available):",
        "",
        "| method | - direct (points) | 95% interval | recovery | 95% interval |",
        "|---|---|---|---|---|",
    ]
    for name, iv in paired["methods"].items():
        if iv is None:
            lines.append(f"| {name} | no per-episode rows | - | - | - |")
            continue
        d, r = iv["diff"], iv["recovery"]
        lines.append(
            f"| {name} | {pts(d['mean'])} | [{pts(d['lo'])}, {pts(d['hi'])}] | "
            f"{pct(r['mean'])} | [{pct(r['lo'])}, {pct(r['hi'])}] |"
        )
    return lines


def write_report(results: dict, out: Location) -> None:
    """results.md, then results.json (what `hyperflow pipeline` takes as "evaluate is done"),
    each written whole (engine.storage: temp file + rename locally, one PUT on object stores)."""
    out.write_bytes("results.md", markdown(results).encode())
    out.write_bytes("results.json", json.dumps(results, indent=1).encode())
