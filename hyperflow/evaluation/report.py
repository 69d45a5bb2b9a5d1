"""Turn evaluation rows into results.json (DESIGN section 5) and a markdown table."""

from __future__ import annotations

import json
from collections import defaultdict

from engine.storage import Location
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
    for r in sorted(rows, key=lambda r: (r["method"], r["domain"], r["index"])):
        acc[r["method"]][r["domain"]].append(r["acc"])
        secs[r["method"]].append(r["seconds"])
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
        }
    return out


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
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: Location) -> None:
    """results.md, then results.json (what `hyperflow pipeline` takes as "evaluate is done"),
    each written whole (engine.storage: temp file + rename locally, one PUT on object stores)."""
    out.write_bytes("results.md", markdown(results).encode())
    out.write_bytes("results.json", json.dumps(results, indent=1).encode())
