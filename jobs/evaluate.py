"""`hyperflow evaluate`: every method on the same episodes of every domain, on Ray actors.

Learning rates of the gradient methods come from the config or, when absent, from a grid searched
on a few validation episodes of the held-out domains (as P>M>F does). Accuracy per domain with 95%
confidence intervals, adaptation seconds per episode, and peak adaptation memory (the tensor
allocator's high-water mark on one episode) go to DIR/results.json and DIR/results.md. --target,
--drift, --smat and --out may be local paths or URLs (s3://bucket/prefix, ...): every file goes
through engine.storage, and the Ray actors are handed the URLs and read through it too.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from engine.pool import ResilientPool, connect
from engine.storage import Location
from hyperflow.adapt.hyperflow import find_drift_dirs, load_for_target
from hyperflow.config import load_config
from hyperflow.data import Dataset, load_dataset
from hyperflow.errors import UserError
from hyperflow.evaluation.plan import (
    VALIDATION_OFFSET,
    episode_jobs,
    lr_candidates,
    method_specs,
)
from hyperflow.evaluation.plots import plot_loss_curves, plot_tradeoff
from hyperflow.evaluation.report import add_paired, markdown, summarize, write_report
from hyperflow.evaluation.reuse import check_same_episodes, load_reusable
from hyperflow.evaluation.worker import EpisodeJob, EvalWorker, MethodSpec
from hyperflow.model import load_target, target_id
from hyperflow.smat import load_smat
from jobs.common import add_config_args, output, positive_int, source

CHUNK = 4  # episodes per actor call: small enough to balance, large enough to amortise


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--target", required=True, help="what `hyperflow pretrain` wrote (path or URL)")
    p.add_argument("--drift", help="a `hyperflow train` output, or a directory/prefix of them")
    p.add_argument("--smat", help="a `hyperflow train --method smat` output (path or URL)")
    p.add_argument("--out", required=True, help="directory or URL for results.json/.md, plots")
    p.add_argument("--dataset", help="dataset spec (default: the config's), e.g. folder:PATH")
    p.add_argument("--methods", help="comma-separated methods (default: the config's)")
    p.add_argument(
        "--episodes", type=positive_int, help="episodes per domain (default: the config's)"
    )
    p.add_argument("--workers", type=positive_int, help="Ray actors (default: the config's)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    p.add_argument(
        "--reuse",
        help="a previous results.json (or its directory, path or URL): the gradient baselines "
        "it holds for the same target and episodes are copied, not re-run",
    )


@dataclass
class Setup:
    """Everything checked before Ray starts: what to run, on which episodes, written where."""

    cfg: Any  # hyperflow.config.Config
    args: argparse.Namespace
    out: Location
    data: Dataset
    domains: list[str]
    drifts: dict[str, str]  # interpolant -> drift location
    jobs: list[EpisodeJob]  # the evaluation episodes, every domain
    header: dict  # results.json's header: what fixes the episodes and the target
    reused: dict[str, dict]  # method -> results entry copied from --reuse
    lrs: dict[str, float]  # gradient method -> learning rate, fixed or reused
    to_run: list[str]  # the method names not reused
    init: dict  # EvalWorker arguments
    workers: int

    def plan(self, lrs: dict[str, float]) -> list[MethodSpec]:
        ev = self.cfg.evaluate
        return method_specs(
            self.to_run,
            lrs,
            self.cfg.adapt.steps,
            self.drifts,
            ev.solver,
            ev.solver_steps,
            ev.encode_chunk,
            smat=self.args.smat,
            step_scales=ev.step_scales,
            compiled=ev.compile,
        )

    def heldout(self) -> list[str]:
        """The held-out domains evaluated, or every domain when none is held-out."""
        held = [d for d in self.domains if self.data.domains[d].split == "heldout"]
        return held or self.domains


def run(args: argparse.Namespace) -> None:
    setup = _setup(args)
    methods = setup.plan(setup.lrs)  # refuses unknown methods before Ray starts
    ev = setup.cfg.evaluate
    connect(args.address, num_cpus=None)
    pool = ResilientPool(
        EvalWorker,
        setup.workers,
        setup.init,
        num_gpus=ev.gpus_per_worker,
        placement_timeout=ev.placement_timeout,
        replace_fraction=ev.replace_fraction,
    )
    try:
        methods = _tune_lrs(pool, setup, methods)
        rows = _run(pool, setup.jobs, methods, "evaluate")
        curves = _curves(pool, setup.jobs, methods, setup.heldout(), setup.drifts, ev)
        memory = _measure_memory(pool, methods, setup.jobs[0]) if ev.memory else {}
    finally:
        pool.shutdown()
    _report(setup, rows, methods, curves, memory)


def _setup(args: argparse.Namespace) -> Setup:
    # config
    cfg = load_config(args.config, args.set)
    ev = cfg.evaluate
    episodes = ev.episodes if args.episodes is None else args.episodes
    names = args.methods.split(",") if args.methods else ev.methods
    dataset = args.dataset or cfg.data.dataset
    # a local --out is created once the results exist; unreadable inputs or an unwritable --out
    # (path, bucket, credentials) fail here with exit 2, before Ray starts
    out = output(args.out, create=False)
    source(args.target, "--target")
    if args.drift:
        source(args.drift, "--drift")
    if args.smat:
        source(args.smat, "--smat")

    # inputs: validate everything cheap before starting Ray
    model = load_target(args.target)
    data = load_dataset(dataset, model.cfg.image_size, model.cfg.channels, cfg.data.cache_dir)
    domains = ev.domains or data.names()
    for d in domains:
        if d not in data.domains:
            raise UserError(f"evaluate domain {d!r} not in {dataset!r} ({data.names()})")
    drifts = find_drift_dirs(args.drift) if args.drift else {}
    for path in drifts.values():  # refuse a drift for another target here, not in every actor
        load_for_target(path, model)
    if args.smat:  # likewise a SMAT trained for another bias layout
        load_smat(args.smat, model)
    ec = cfg.episodes
    shifts = tuple(ev.shifts)
    jobs = episode_jobs(data, domains, episodes, ec.way, ec.shot, ec.query, ev.seed, 0, shifts)
    header = {
        "episodes_per_domain": episodes,
        "way": ec.way,
        "shot": ec.shot,
        "seed": ev.seed,
        "dataset": dataset,
        "target": str(args.target),
        "target_id": target_id(args.target),
        "shifts": list(shifts),
    }

    # baselines copied from --reuse: the same episodes, row by row
    lrs = dict(cfg.adapt.lr)
    reused = load_reusable(args.reuse, header, domains, names) if args.reuse else {}
    if reused:
        print(f"reusing {', '.join(reused)} from {args.reuse}")
        rowless = check_same_episodes(reused, jobs, args.reuse)
        if rowless:
            print(f"{', '.join(rowless)} from {args.reuse} have no per-episode rows (older "
                  "results): no paired intervals against them")  # fmt: skip
        lrs.update({name: e["lr"] for name, e in reused.items() if e.get("lr") is not None})
    init = {
        "target_dir": str(args.target),
        "dataset": dataset,
        "cache_dir": cfg.data.cache_dir,
        "drift_dirs": drifts,
        "smat_dir": args.smat,
    }
    return Setup(
        cfg=cfg,
        args=args,
        out=out,
        data=data,
        domains=domains,
        drifts=drifts,
        jobs=jobs,
        header=header,
        reused=reused,
        lrs=lrs,
        to_run=[n for n in names if n not in reused],
        init=init,
        workers=args.workers or ev.workers,
    )


def _tune_lrs(pool: ResilientPool, setup: Setup, methods: list[MethodSpec]) -> list[MethodSpec]:
    """The methods with learning rates searched on validation episodes of the held-out domains
    where neither the config nor --reuse fixes them (as P>M>F does)."""
    cfg, ec = setup.cfg, setup.cfg.episodes
    a = cfg.adapt
    grid = lr_candidates(setup.to_run, a.lr_grid, a.full_lr_grid, a.steps)
    search = [m for m in grid if m.kind not in setup.lrs]
    if not search:
        return methods
    val = episode_jobs(
        setup.data,
        setup.heldout(),
        a.val_episodes,
        ec.way,
        ec.shot,
        ec.query,
        cfg.evaluate.seed,
        offset=VALIDATION_OFFSET,
        shifts=tuple(cfg.evaluate.shifts),
    )
    rows = _run(pool, val, search, "lr search")
    lrs = {**setup.lrs, **_best_lrs(rows, search)}
    print("learning rates: " + ", ".join(f"{k}={v:g}" for k, v in sorted(lrs.items())))
    return setup.plan(lrs)


def _report(setup: Setup, rows, methods, curves, memory) -> None:
    data, out = setup.data, setup.out
    splits = {
        d: {"split": data.domains[d].split, "family": data.domains[d].family} for d in setup.domains
    }
    results = summarize(rows, methods, splits, setup.header, memory)
    results["methods"] = {**setup.reused, **results["methods"]}  # the baselines first, as listed
    results = add_paired(results)
    out.makedirs()
    out.write_bytes("accuracy_vs_time.png", plot_tradeoff(results))
    if curves:
        out.write_bytes("loss_curves.png", plot_loss_curves(curves))
    write_report(results, out)  # results.json last: it marks the evaluation finished
    print(markdown(results))
    print(f"wrote {out.url}/results.json, results.md and PNG plots")


def _run(pool, jobs, methods, desc) -> list[dict]:
    chunks = [(jobs[i : i + CHUNK], methods) for i in range(0, len(jobs), CHUNK)]
    rows = []
    with tqdm(total=len(jobs), desc=desc, unit="episode") as bar:
        for (chunk, _), result in pool.map_unordered("run", chunks):
            rows.extend(result)
            bar.update(len(chunk))
    return rows


def _curves(pool, jobs, methods, domains, drifts, ev, per_domain: int = 2) -> list[dict]:
    """Support-loss paths for the first episodes of each (held-out) domain."""
    bias = next((m for m in methods if m.kind == "bias_tuning"), None)
    if not drifts and bias is None:
        return []
    picked = [j for d in domains for j in [j for j in jobs if j.domain == d][:per_domain]]
    work = [(j, bias, max(ev.solver_steps)) for j in picked]
    return [c for _, c in pool.map_unordered("loss_curves", work)]


def _best_lrs(rows, candidates) -> dict[str, float]:
    score = defaultdict(list)
    for r in rows:
        score[r["method"]].append(r["acc"])
    best: dict[str, tuple[float, float]] = {}
    for m in candidates:  # ties keep the first (smallest) learning rate of the grid
        acc = sum(score[m.name]) / len(score[m.name])
        if m.kind not in best or acc > best[m.kind][0]:
            best[m.kind] = (acc, m.lr)
    return {k: v[1] for k, v in best.items()}


def _measure_memory(pool: ResilientPool, methods, job) -> dict[str, dict]:
    # peak adaptation memory per method on one episode, {"bytes", "device"}: a task per method
    # on the evaluation workers; the allocator's count is exact on a warm worker
    # (hyperflow/evaluation/memory.py), so no fresh process is needed
    results = pool.map_unordered("memory", [(m, job) for m in methods])
    return {method.name: result for (method, _), result in results}
