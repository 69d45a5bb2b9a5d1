"""`hyperflow pipeline --config C --out DIR`: pretrain, collect, train one drift network per
interpolant, evaluate; each stage is skipped when its output is already complete, so a rerun
finishes an interrupted pipeline. Every stage runs as its own `hyperflow` process, exactly the
command a user would type (printed before it runs).

DIR/target  DIR/store  DIR/drift/<interpolant>  DIR/eval
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from hyperflow.config import load_config
from hyperflow.errors import UserError
from hyperflow.evaluation.plan import HYPERFLOW_METHODS
from jobs.common import add_config_args, check_out_dir, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--workers", type=positive_int, help="Ray actors for collect and evaluate")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    p.add_argument("--nproc", type=positive_int, default=1, help="training processes")


def run(args: argparse.Namespace) -> None:
    # config: validated here so a typo fails before any stage starts
    cfg = load_config(args.config, args.set)
    out = check_out_dir(Path(args.out))
    common = ["--config", args.config] + [x for kv in args.set for x in ("--set", kv)]
    ray = (["--workers", str(args.workers)] if args.workers else []) + (
        ["--address", args.address] if args.address else []
    )
    target, store, drift, evaluation = (out / n for n in ("target", "store", "drift", "eval"))
    interpolants = [HYPERFLOW_METHODS[m] for m in cfg.evaluate.methods if m in HYPERFLOW_METHODS]

    # stages
    if not (target / "target.json").is_file():
        _stage("pretrain", common + ["--out", str(target)])
    else:
        print(f"[pipeline] pretrain: {target} exists, skipping")
    # collect resumes by itself: it skips committed shards and says when the store is complete
    _stage("collect", common + ray + ["--target", str(target), "--out", str(store)])
    for interp in interpolants:
        d = drift / interp
        if (d / "drift.json").is_file():
            print(f"[pipeline] train {interp}: {d} exists, skipping")
            continue
        resume = ["--resume"] if any((d / "checkpoints").glob("step-*/progress.json")) else []
        _stage(
            "train",
            common
            + ["--store", str(store), "--target", str(target), "--out", str(d)]
            + ["--interpolant", interp, "--nproc", str(args.nproc)]
            + resume,
        )
    if not (evaluation / "results.json").is_file():
        drift_args = ["--drift", str(drift)] if interpolants else []
        _stage(
            "evaluate",
            common + ray + ["--target", str(target), "--out", str(evaluation)] + drift_args,
        )
    else:
        print(f"[pipeline] evaluate: {evaluation / 'results.json'} exists, skipping")
        print((evaluation / "results.md").read_text())


def _stage(command: str, argv: list[str]) -> None:
    cmd = [sys.executable, "-m", "jobs.cli", command, *argv]
    print(f"[pipeline] hyperflow {command} {' '.join(argv)}", flush=True)
    code = subprocess.call(cmd)
    if code != 0:
        raise UserError(f"stage {command!r} failed with exit code {code}; rerun to resume")
