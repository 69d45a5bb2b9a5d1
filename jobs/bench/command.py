"""`hyperflow bench NAME --json`: measured claims, printed as JSON (ratios within one run).

simulate  trajectories/s of the per-episode loop and of the batched simulator, same episodes, same T
collect   bare batched simulator vs the Ray engine with 1 and 2 workers; write share;
          bytes per trajectory
stream    data wait share of trainer steps; samples/s with 1 and 2 ranks
adapt     HyperFlow vs bias-tuning adaptation time and peak memory per episode
scale     the engine at N records (synthetic simulator): commit cost first vs last shards, driver
          memory, manifest size, resume after SIGKILL, verify and stream start-up
drift-scale  a >= 50M-parameter drift network: 100 steps on 2 ranks, grad accumulation, bf16,
          killed after a checkpoint and resumed; step time, peak RSS per rank, resume exactness
smat-sweep  SMAT settings (smat.lr x smat.tau) chosen by accuracy on base-domain episodes only
cpu       where a command's CPU time goes (--run 'make test'): CPU seconds per kind of process
"""

from __future__ import annotations

import argparse
import importlib
import json

from jobs.common import add_config_args, positive_int

BENCHES = {
    "simulate": "jobs.bench.simulate",
    "collect": "jobs.bench.collect",
    "stream": "jobs.bench.stream",
    "adapt": "jobs.bench.adapt",
    "scale": "jobs.bench.scale",
    "drift-scale": "jobs.bench.drift_scale",
    "smat-sweep": "jobs.bench.smat_sweep",
    "cpu": "jobs.bench.cpu",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    add_config_args(p, required=False)
    p.add_argument("--target", help="a pretrained target directory (default: untrained backbone)")
    p.add_argument("--episodes", type=int, default=16, help="episodes (trajectories) to time")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument(
        "--records",
        type=positive_int,
        default=100_000,
        help="scale: records to collect (docs/scale.md reports 1,000,000)",
    )
    p.add_argument(
        "--out",
        help="scale: the store, a directory or URL (default: a temp dir); smat-sweep: a directory",
    )
    p.add_argument("--store", help="smat-sweep: the store to train on")
    p.add_argument("--format", choices=["zarr", "wds", "both"], help="scale: store formats")
    p.add_argument(
        "--drift",
        help="adapt: a `hyperflow train` directory (default: an untrained drift network of the "
        "config's train settings, which adapts at the same cost)",
    )
    p.add_argument("--run", metavar="COMMAND", help="cpu: the command to run and profile (sh -c)")
    p.add_argument(
        "--interval", type=float, default=0.5, help="cpu: seconds between samples of /proc"
    )


def run(args: argparse.Namespace) -> None:
    result = importlib.import_module(BENCHES[args.name]).bench(args)
    print(json.dumps(result, indent=None if args.json else 1))
