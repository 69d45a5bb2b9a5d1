"""`hyperflow sweep`: the scaling curve, drift sizes x trajectory counts on the same episodes.

For every drift size (train.size preset) and every N in --records, trains a drift network on the
store's first N records (train.max_records: nested subsets; with --scale-steps for train.steps x
N / smallest N steps, the same passes over its records at every N), once per training seed of
--seeds, and evaluates it on the
episodes of --baselines, a results.json holding `direct` and `bias_tuning` for exactly those
episodes and target (`hyperflow evaluate --methods direct,bias_tuning`); the baselines are copied
(`evaluate --reuse`), never re-run. Each grid point is exactly the `hyperflow train` and
`hyperflow evaluate` command a user would type, printed as it starts; points whose outputs exist
are skipped, so an interrupted sweep continues where it stopped.

Writes DIR/scaling.md (a table: held-out accuracy with its 95% interval, and the share of
bias-tuning's gain recovered on all held-out domains, on those whose shift family trajectories
were collected under, and on the never-collected ones, each with its paired bootstrap 95%
interval over episodes), DIR/scaling.json (one point per grid cell: store, size, records, training
seed and the three recoveries as {"mean", "lo", "hi"}, the format of docs/scaling.json) and
DIR/scaling.png (recovery against trajectories, one line per size), and prints the rows as JSON.

The change from the smallest to the largest N is reported per seed, paired over episodes: it
holds the trained drift fixed, so it cannot say whether another seed would rise too. With two or
more --seeds, `seed_changes` also gives the mean change over seeds with its Student-t 95% interval
over seeds (docs/scaling.md: four seeds' changes spanned 25 points at equal steps, more than any
effect of N measured; a rise with N has to hold across seeds).
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.manifest import Manifest
from engine.storage import location
from hyperflow.config import load_config
from hyperflow.errors import UserError
from hyperflow.evaluation.paired import recovery_change
from hyperflow.evaluation.plan import HYPERFLOW_METHODS
from hyperflow.evaluation.scaling import heldout_groups, plot_curve, summary_row
from hyperflow.evaluation.stats import over_seeds
from jobs.common import add_config_args, output, run_hyperflow, set_flags, source

BASELINES = ("direct", "bias_tuning")
# heldout_groups' keys -> docs/scaling.json's field prefixes
GROUPS = {"heldout": "heldout", "collected": "collected", "never": "never_collected"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--store", required=True, help="the store to draw nested subsets from")
    p.add_argument("--target", required=True, help="the target the store was collected with")
    p.add_argument(
        "--baselines",
        required=True,
        help="results.json (or its directory) with direct and bias_tuning on the report episodes",
    )
    p.add_argument("--out", required=True, help="directory or URL: one sub-directory per point")
    p.add_argument("--sizes", default="small,base,large", help="drift size presets, comma list")
    p.add_argument("--records", default="300,600,1200,2400,4800", help="trajectory counts")
    p.add_argument(
        "--seeds",
        default=None,
        help="training seeds, comma list: every point is trained once per seed, into "
        "SIZE-N-seedS (default: the config's train.seed alone, into SIZE-N); with 2 or more, the "
        "report adds the change from the smallest to the largest N over seeds (t-interval)",
    )
    p.add_argument("--method", default="hyperflow_cubic", choices=sorted(HYPERFLOW_METHODS))
    p.add_argument("--steps", type=int, default=20, help="Euler steps of the reported method")
    p.add_argument(
        "--scale-steps",
        action="store_true",
        help="train.steps is the step count at the smallest --records; a point of N records "
        "trains train.steps x N / smallest N steps (as many passes over its records as the "
        "smallest point makes; without it every point trains train.steps)",
    )


def _int_list(text: str, what: str, least: int = 1) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{what} must be comma-separated whole numbers, got {text!r}") from None
    if any(v < least for v in values):
        raise UserError(f"{what} must all be >= {least}, got {text!r}")
    return sorted(set(values))


def run(args: argparse.Namespace) -> None:
    # config: every input checked before the first run starts
    cfg = load_config(args.config, args.set)
    sizes = args.sizes.split(",")
    for s in sizes:  # each point's config must load: the schema checks the size and its dims
        load_config(args.config, [*args.set, f"train.size={s}"])
    records = _int_list(args.records, "--records")
    # None: the config's seed alone (see _point_name)
    seeds = None if args.seeds is None else _int_list(args.seeds, "--seeds", least=0)
    for seed in seeds or []:
        load_config(args.config, [*args.set, f"train.seed={seed}"])
    source(args.target, "--target")
    manifest = Manifest.load(source(args.store, "--store").url)
    held = sum(s.records for s in manifest.shards_of(cfg.train.format))
    if records[-1] > held:
        raise UserError(f"--records {records[-1]} is more than the store's {held} records")
    base = _load_results(args.baselines, "--baselines")
    missing = [m for m in BASELINES if m not in base["methods"]]
    if missing:
        raise UserError(f"--baselines {args.baselines!r} lacks {missing}")
    if args.steps not in cfg.evaluate.solver_steps:
        raise UserError(f"--steps {args.steps} not in evaluate.solver_steps")
    interpolant = HYPERFLOW_METHODS[args.method]
    reported = f"{args.method}@{args.steps}"
    collected = list(manifest.config.get("shifts", []))
    out = output(args.out)
    common = ["--config", args.config, *set_flags(args.set)]
    # the baselines' episodes: same seed, count and domains, so --reuse accepts them
    episodes = [
        f"evaluate.seed={base['seed']}",
        f"evaluate.domains={json.dumps(list(base['domains']))}",
        f"evaluate.shifts={json.dumps(base.get('shifts', []))}",
    ]

    # loop: one train + one evaluate per point; finished points are skipped
    rows, by_point = [], {}
    grid = [(size, n, seed) for size in sizes for n in records for seed in seeds or [None]]
    for size, n, seed in grid:
        point = _point_name(size, n, seed)
        drift, report = f"{out.url}/{point}", f"{out.url}/{point}/eval"
        steps = _train_steps(cfg.train.steps, n, records[0], args.scale_steps)
        if not out.exists(f"{point}/drift.json"):
            sets = [f"train.size={size}", f"train.max_records={n}", f"train.steps={steps}"]
            sets += [] if seed is None else [f"train.seed={seed}"]
            run_hyperflow(
                ["train", *common, "--store", args.store, "--target", args.target]
                + ["--out", drift, "--interpolant", interpolant, *set_flags(sets)],
                "sweep",
            )
        if not out.exists(f"{point}/eval/results.json"):
            run_hyperflow(
                ["evaluate", *common, "--target", args.target, "--drift", drift]
                + ["--methods", ",".join([*BASELINES, args.method])]
                + ["--episodes", str(base["episodes_per_domain"])]
                + ["--reuse", args.baselines, "--out", report, *set_flags(episodes)],
                "sweep",
            )
        results = _load_results(report, "evaluate --out")
        seed = cfg.train.seed if seed is None else seed
        by_point[size, n, seed] = results
        params = json.loads(out.read_bytes(f"{point}/drift.json"))["params"]
        row = {"size": size, "params": params, "records": n, "seed": seed, "train_steps": steps}
        rows.append(row | summary_row(results, reported, collected))

    _report(out, rows, by_point, reported, base, collected, args.store)


def _report(out, rows, by_point, method: str, base: dict, collected: list[str], store: str):
    # scaling.png, scaling.md and scaling.json under --out; the rows as JSON on stdout
    changes = _changes(by_point, method, collected)
    seed_changes = _seed_changes(changes)
    out.write_bytes("scaling.png", plot_curve(rows, method))
    report_md = _markdown(rows, changes, seed_changes, method, base, collected)
    out.write_bytes("scaling.md", report_md.encode())
    doc = {
        "method": method,
        "episodes_per_domain": base["episodes_per_domain"],
        "episode_seed": base["seed"],
        "collected_shifts": collected,
        "points": _points(rows, store),
        "changes": changes,
        "seed_changes": seed_changes,
    }
    out.write_bytes("scaling.json", json.dumps(doc, indent=1).encode())
    print(json.dumps({"method": method, "collected_shifts": collected, "rows": rows}, indent=1))
    print(f"wrote {out.url}/scaling.md, scaling.json and scaling.png", file=sys.stderr)


def _point_name(size: str, records: int, seed: int | None) -> str:
    # a point's directory under --out: SIZE-N-seedS when --seeds names the seeds; SIZE-N for the
    # config's seed alone, as sweeps before --seeds wrote, so those still resume
    return f"{size}-{records}" if seed is None else f"{size}-{records}-seed{seed}"


def _train_steps(steps: int, n: int, smallest: int, scale: bool) -> int:
    # --scale-steps: a fixed number of passes over the records. A fixed step count under-trains
    # the large points (docs/scaling.md: 4x the steps at 2,400 procedural records, +10 points)
    return -(-steps * n // smallest) if scale else steps


def _load_results(path: str, what: str) -> dict:
    loc = location(path)
    if loc.exists("results.json"):
        return json.loads(loc.read_bytes("results.json"))
    parent, _, name = loc.url.rstrip("/").rpartition("/")
    if not name or not location(parent).exists(name):
        raise UserError(f"{what} {path!r} is neither a results.json nor a directory with one")
    return json.loads(location(parent).read_bytes(name))


def _changes(by_point: dict, method: str, collected: list[str]) -> list[dict]:
    # per size and seed, recovery at the largest N minus at the smallest, paired over the shared
    # episodes: whether more trajectories paid beyond episode noise (issue 21's acceptance)
    records = sorted({n for _, n, _ in by_point})
    if len(records) < 2:
        return []
    out = []
    for size, seed in dict.fromkeys((size, seed) for size, _, seed in by_point):
        first, last = by_point[size, records[0], seed], by_point[size, records[-1], seed]
        change = {"size": size, "seed": seed, "from": records[0], "to": records[-1]}
        for key, domains in heldout_groups(first, collected).items():
            iv = recovery_change(first, last, method, domains) if domains else None
            change[f"{GROUPS[key]}_recovery"] = iv.to_dict() if iv else None
        out.append(change)
    return out


def _seed_changes(changes: list[dict]) -> list[dict]:
    # per size with >= 2 seeds: the mean of the seeds' changes, its t-interval over seeds
    out = []
    for size in dict.fromkeys(c["size"] for c in changes):
        mine = [c for c in changes if c["size"] == size]
        if len(mine) < 2:
            continue
        row = {"size": size, "seeds": [c["seed"] for c in mine]}
        row |= {"from": mine[0]["from"], "to": mine[0]["to"]}
        for name in GROUPS.values():
            key = f"{name}_recovery"
            row[key] = over_seeds([c[key] and c[key]["mean"] for c in mine])
        out.append(row)
    return out


def _points(rows: list[dict], store: str) -> list[dict]:
    # docs/scaling.json's point: recoveries with their paired intervals (None without rows)
    return [
        {"store": store, "size": r["size"], "records": r["records"], "seed": r["seed"]}
        | {"train_steps": r["train_steps"]}
        | {f"{name}_recovery": r[f"recovery_{key}_ci"] for key, name in GROUPS.items()}
        for r in rows
    ]


def _recovery_cell(row: dict, key: str) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}"  # noqa: E731
    value, ci = row[f"recovery_{key}"], row.get(f"recovery_{key}_ci")
    if value is None:
        return "-"
    if ci is None:
        return f"{pct(value)}%"
    return f"{pct(value)}% [{pct(ci['lo'])}, {pct(ci['hi'])}]"


def _markdown(
    rows: list[dict],
    changes: list[dict],
    seed_changes: list[dict],
    method: str,
    base: dict,
    collected: list[str],
) -> str:
    lines = [
        f"{method}: held-out accuracy (95% interval) and share of bias-tuning's gain recovered "
        "[paired bootstrap 95% interval over episodes; '-': unbounded]; "
        f"{base['episodes_per_domain']} episodes per domain, seed {base['seed']}; collected "
        f"shift families {collected}.",
        "",
        "| size | params | trajectories | seed | steps | held-out | all | collected "
        "| never collected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['records']} | {r['seed']} | "
            f"{r['train_steps']} | {100 * r['heldout']:.1f} ± {100 * r['heldout_ci95']:.1f} | "
            f"{_recovery_cell(r, 'heldout')} | {_recovery_cell(r, 'collected')} | "
            f"{_recovery_cell(r, 'never')} |"
        )
    if changes:
        title = "Recovery at the largest N minus at the smallest, in points [paired 95% interval]:"
        lines += _change_table(title, "seed", changes, lambda c: c["seed"])
    if seed_changes:
        title = (
            "The same change over training seeds: mean of the seeds' changes, in points [Student-t "
            "95% interval over seeds; '-': a seed's change is unbounded]:"
        )
        lines += _change_table(
            title, "seeds", seed_changes, lambda c: ",".join(map(str, c["seeds"]))
        )
    return "\n".join(lines) + "\n"


def _change_table(title: str, column: str, changes: list[dict], label) -> list[str]:
    # one row per change: size, label(change) under `column`, N from and to, the three groups
    lines = ["", title, "", f"| size | {column} | from | to | all | collected | never collected |"]
    lines.append("|---|---|---|---|---|---|---|")
    for c in changes:
        cells = [_change_cell(c[f"{name}_recovery"]) for name in GROUPS.values()]
        lines.append(
            f"| {c['size']} | {label(c)} | {c['from']} | {c['to']} | " + " | ".join(cells) + " |"
        )
    return lines


def _change_cell(iv: dict | None) -> str:
    if iv is None or iv["mean"] is None:
        return "-"
    pts = lambda v: "-" if v is None else f"{100 * v:+.0f}"  # noqa: E731
    return f"{pts(iv['mean'])} [{pts(iv['lo'])}, {pts(iv['hi'])}]"
