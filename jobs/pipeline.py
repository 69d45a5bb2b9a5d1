"""`hyperflow pipeline --config C --out DIR`: pretrain, collect, train one drift network per
interpolant (and SMAT when evaluate.methods holds smat or smat_finetune), evaluate; each stage
is skipped when its output is already complete, so a rerun finishes an interrupted pipeline.
Every stage runs as its own `hyperflow` process, exactly the command a user would type (printed
before it runs). With `--workers N`, or whenever the pipeline runs inside a submitted Ray job,
pretrain and every training stage are Ray Train runs on the cluster's workers (N, else
train.workers, else 1), so the job's driver needs no GPU; otherwise they run here (`--nproc`
torchrun ranks).

DIR/target  DIR/store  DIR/drift/<interpolant>  DIR/smat  DIR/eval

DIR may be a local path or a URL (s3://bucket/prefix, ...): the stages get URLs under it and
whether a stage is finished is asked of the storage layer (engine.storage), so a pipeline on
object storage resumes like a local one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from engine.pool import JOB_CONFIG_VAR, stage_env
from engine.storage import Location
from hyperflow.config import load_config
from hyperflow.errors import UserError
from hyperflow.evaluation.plan import interpolants_for
from hyperflow.smat import SMAT_METHODS
from jobs.common import add_config_args, output, positive_int
from jobs.train.state import CHECKPOINTS, complete_checkpoints

REPO = Path(__file__).resolve().parents[1]  # under `ray job submit`: the job's working_dir copy
PACKAGES = ("engine", "hyperflow", "jobs")  # what the stages' actors import


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--out", required=True, help="run directory or URL")
    p.add_argument(
        "--workers",
        type=positive_int,
        help="Ray actors for collect and evaluate, and Ray Train workers for pretrain and train",
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    p.add_argument(
        "--nproc", type=positive_int, default=1, help="processes of pretrain and train (torchrun)"
    )


def run(args: argparse.Namespace) -> None:
    # config: validated here so a typo fails before any stage starts
    cfg = load_config(args.config, args.set)
    out = output(args.out)  # a bad path, bucket or credentials: exit 2 before any stage
    common = ["--config", args.config] + [x for kv in args.set for x in ("--set", kv)]
    ray = (["--workers", str(args.workers)] if args.workers else []) + (
        ["--address", args.address] if args.address else []
    )
    ranks = ["--nproc", str(args.nproc)]
    if args.workers or JOB_CONFIG_VAR in os.environ:  # training on the cluster (Ray Train)
        n = args.workers or cfg.train.workers or 1
        ranks = ["--workers", str(n)] + (["--address", args.address] if args.address else [])
    target, store, drift, evaluation = (out.child(n) for n in ("target", "store", "drift", "eval"))
    interpolants = interpolants_for(cfg.evaluate.methods)  # the drift networks evaluate needs
    smat = out.child("smat") if set(cfg.evaluate.methods) & set(SMAT_METHODS) else None

    # stages
    # target.json, drift.json, smat.json and results.json are each their stage's last write
    if not _done(target, "target.json"):
        _stage("pretrain", common + ["--out", target.url] + ranks)
    else:
        print(f"[pipeline] pretrain: {target.url} exists, skipping")
    # collect resumes by itself: it skips committed shards and says when the store is complete
    _stage("collect", common + ray + ["--target", target.url, "--out", store.url])
    for interp in interpolants:
        d = drift.child(interp)
        if _done(d, "drift.json"):
            print(f"[pipeline] train {interp}: {d.url} exists, skipping")
            continue
        resume = ["--resume"] if complete_checkpoints(d.child(CHECKPOINTS)) else []
        _stage(
            "train",
            common
            + ["--store", store.url, "--target", target.url, "--out", d.url]
            + ["--interpolant", interp]
            + ranks
            + resume,
        )
    if smat is not None and _done(smat, "smat.json"):
        print(f"[pipeline] train smat: {smat.url} exists, skipping")
    elif smat is not None:
        resume = ["--resume"] if complete_checkpoints(smat.child(CHECKPOINTS)) else []
        _stage(
            "train",
            common
            + ["--method", "smat", "--store", store.url, "--target", target.url]
            + ["--out", smat.url]
            + ranks
            + resume,
        )
    if not _done(evaluation, "results.json"):
        drift_args = ["--drift", drift.url] if interpolants else []
        drift_args += ["--smat", smat.url] if smat is not None else []
        _stage(
            "evaluate",
            common + ray + ["--target", target.url, "--out", evaluation.url] + drift_args,
        )
    else:
        print(f"[pipeline] evaluate: {evaluation.url}/results.json exists, skipping")
        print(evaluation.read_bytes("results.md").decode())


def _stage(command: str, argv: list[str]) -> None:
    cmd = [sys.executable, "-m", "jobs.cli", command, *argv]
    print(f"[pipeline] hyperflow {command} {' '.join(argv)}", flush=True)
    start = time.monotonic()
    code = subprocess.call(cmd, env=stage_env([str(REPO / p) for p in PACKAGES]))
    if code != 0:
        raise UserError(f"stage {command!r} failed with exit code {code}; rerun to resume")
    print(f"[pipeline] {command} done in {time.monotonic() - start:.0f} s", flush=True)


def _done(loc: Location, key: str) -> bool:
    """Whether `key` exists, as the stages (other processes) left it: fsspec backends cache
    listings, which would hide objects written after this process first looked."""
    loc.fs.invalidate_cache()
    return loc.exists(key)
