"""`hyperflow bench smat-sweep --config C --store S --target T --out DIR --json`: SMAT's settings
chosen on base domains only.

Trains one SMAT per point of a small grid (smat.lr x smat.tau; everything else from the config)
on the store, then evaluates each zero-shot merge (`smat`, beside `direct`) on episodes of the
base domains under the collected shift families (evaluate.shifts = collect.shifts: the
distribution the trajectories come from; clean base episodes sit at ~99% for every method and
cannot tell settings apart), drawn with a seed of their own (SEARCH_SEED), so that neither the
held-out domains nor the report's episodes take part in the choice. Prints accuracy per point
and the best.
Each point is exactly the `hyperflow train` / `hyperflow evaluate` command a user would type.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from hyperflow.config import load_config
from hyperflow.data import load_dataset
from hyperflow.errors import UserError
from jobs.common import run_hyperflow, set_flags

GRID = {"smat.lr": [1e-3, 1e-2], "smat.tau": [0.1, 0.3]}
SEARCH_SEED = 7000  # evaluate.seed of the search episodes: not the report's (evaluate.seed)


def bench(args: argparse.Namespace) -> dict:
    # config
    if not (args.store and args.target and args.out):
        raise UserError("smat-sweep needs --store, --target and --out (a directory)")
    cfg = load_config(args.config, args.set)
    if SEARCH_SEED == cfg.evaluate.seed:
        raise UserError(f"evaluate.seed={SEARCH_SEED} would search on the report's episodes")
    data = load_dataset(cfg.data.dataset, cfg.target.image_size, cfg.target.channels, None)
    base = data.names("base")
    out = Path(args.out)
    common = ["--config", args.config, *set_flags(args.set)]

    # loop: one SMAT per grid point, each evaluated on the same base-domain episodes
    points, first = [], None  # first point's report: `direct` on these episodes, reused
    for values in itertools.product(*GRID.values()):
        sets = [f"{k}={v:g}" for k, v in zip(GRID, values)]
        smat = out / ",".join(sets).replace("smat.", "").replace("=", "")
        if not (smat / "smat.json").exists():
            train = ["train", "--method", "smat", *common, "--store", args.store]
            train += ["--target", args.target, "--out", str(smat), *set_flags(sets)]
            run_hyperflow(train, "smat-sweep")
        report = smat / "base-eval"
        if not (report / "results.json").exists():
            search = [*sets, f"evaluate.domains={json.dumps(base)}", f"evaluate.seed={SEARCH_SEED}"]
            search += [f"evaluate.shifts={json.dumps(cfg.collect.shifts)}"]
            evaluate = ["evaluate", *common, "--target", args.target, "--smat", str(smat)]
            evaluate += ["--methods", "direct,smat", "--episodes", str(args.episodes)]
            evaluate += ["--reuse", str(first)] if first else []
            run_hyperflow(evaluate + ["--out", str(report), *set_flags(search)], "smat-sweep")
        first = first or report
        result = json.loads((report / "results.json").read_text())["methods"]
        acc = {m: result[m]["base_mean"] for m in ("direct", "smat")}
        points.append({"settings": dict(zip(GRID, values)), "base_acc": acc["smat"], **acc})
    best = max(points, key=lambda p: p["base_acc"])
    return {
        "bench": "smat-sweep",
        "base_domains": base,
        "shifts": cfg.collect.shifts,
        "episodes_per_domain": args.episodes,
        "search_seed": SEARCH_SEED,
        "points": points,
        "best": best,
    }
