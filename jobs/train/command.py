"""`hyperflow train`: fit a drift network (or `--method smat`, SMAT) to a trajectory store.

Each rank streams its own disjoint share of the store (engine.stream.RecordStream: every record once
per epoch across ranks, equal batch counts per rank), through one DataLoader over all epochs
(engine.stream.EpochStream); the stream is NOT passed to accelerator.prepare, which would split it
a second time. `--nproc N` (and `--nnodes M --rdzv-endpoint HOST:PORT` across machines) checks
the inputs, then re-executes this command under torchrun (jobs.launch; gloo on CPU).
`--workers N [--min-workers M] [--address ADDR]` makes it a Ray Train run of N workers on a Ray
cluster instead (jobs.train.ray_run; elastic down to M). Both run the same function per rank
(`train_rank`) and the same loop (jobs.train.loop) for the drift network (jobs.train.drift) and
SMAT (jobs.train.smat).

train.grad_accum, train.mixed_precision and train.fsdp: jobs.train.accel (the Accelerator) and
jobs.train.step (one optimizer step of micro-batches); `hyperflow bench drift-scale` at 62M.

--out (and --store, --target) may be a local path or a URL (s3://bucket/prefix, anything fsspec
resolves; engine.storage). Checkpoints: every train.checkpoint_every steps (and at the last step)
each rank joins save_state into DIR/checkpoints/step-N/ (through a temporary local directory on
object storage, jobs.train.state) and adds its t-sampling generator; progress.json, written last and
atomically once every rank is done, marks the checkpoint complete. `--resume` continues the same
run from the newest complete checkpoint: same global step, same place in the epoch, same RNG
streams, so a killed-and-resumed run takes the steps an uninterrupted one would have taken. The
settings that fix the data order and the network (the "run signature") must match; train.steps may
grow (the learning-rate schedule is then re-shaped for the new total). Log rows of steps after the
checkpoint (work lost in the crash) are dropped, so DIR/train_log.jsonl stays one row per step
(on object storage it is rewritten at every checkpoint and at the end, jobs.train.state.StepLog).
A fresh run refuses a directory that already holds checkpoints.

Debug hook: with HYPERFLOW_TRAIN_SEEN=1 in the environment each rank r appends one JSON line per
step, {"step", "epoch", "batch", "ids"}, to DIR/seen-rank{r}.jsonl (the record ids it trained on);
the tests use it to check disjoint, complete epochs across real ranks.
"""

from __future__ import annotations

import argparse
import os
import sys

from engine.manifest import Manifest
from hyperflow.config import load_config
from hyperflow.config.runtime import check_train_runtime
from hyperflow.errors import UserError
from hyperflow.model import target_id
from jobs.common import add_config_args, output, positive_int, source
from jobs.launch import add_launch_arguments, needs_launch, relaunch, world_size
from jobs.train import drift, smat
from jobs.train.accel import make_accelerator
from jobs.train.data import record_stream
from jobs.train.loop import Checkpoints, Position, fit
from jobs.train.state import LocalCheckpoints, check_max_records, resume

TRAINERS = {"drift": (drift, drift.DriftTask), "smat": (smat, smat.SmatTask)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--store", required=True, help="a store written by `hyperflow collect` (or URL)")
    p.add_argument("--target", required=True, help="the target the store was collected with")
    p.add_argument(
        "--out", required=True, help="directory or URL for checkpoints, log and drift weights"
    )
    p.add_argument(
        "--method",
        choices=tuple(TRAINERS),
        default="drift",
        help="drift: HyperFlow's drift network; smat: the SMAT baseline (jobs/train/smat.py)",
    )
    p.add_argument("--interpolant", help="override train.interpolant")
    add_launch_arguments(p)
    add_ray_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=positive_int,
        help="train as a Ray Train run of this many workers (resources: the config's "
        "cpus_per_worker / gpus_per_worker) on the cluster at --address",
    )
    p.add_argument(
        "--min-workers",
        type=positive_int,
        help="elastic: go on with as few as this many workers after a node is lost",
    )
    p.add_argument("--address", help="Ray cluster (default: RAY_ADDRESS, else a private local one)")


def check_ray_arguments(args: argparse.Namespace) -> None:
    """UserError for Ray options that contradict each other or the torchrun options."""
    if args.workers is None:
        for flag, value in (("--min-workers", args.min_workers), ("--address", args.address)):
            if value is not None:
                raise UserError(f"{flag} {value} needs --workers N (a Ray Train run)")
        return
    if args.min_workers is not None and args.min_workers > args.workers:
        raise UserError(f"--min-workers {args.min_workers} exceeds --workers {args.workers}")
    if args.nproc > 1 or args.nnodes > 1:
        raise UserError(
            f"--workers {args.workers} (Ray Train) and --nproc {args.nproc} / --nnodes "
            f"{args.nnodes} (torchrun) are two ways to start ranks: choose one"
        )


def run(args: argparse.Namespace) -> None:
    # config: every bad value, input or output fails before --out is created
    cfg = load_config(args.config, args.set)
    args.workers = args.workers or cfg.train.workers or None  # the flags win over the config
    args.min_workers = args.min_workers or cfg.train.min_workers or None
    check_ray_arguments(args)
    module, _ = TRAINERS[args.method]
    module.check(args, cfg)
    # a torchrun rank's own command line has lost --nproc: the world is in its environment
    world = args.workers or int(os.environ.get("WORLD_SIZE", world_size(args)))
    check_train_runtime(cfg.train, world)
    source(args.target, "--target")
    source(args.store, "--store")
    if cfg.train.max_records:  # a subset larger than the store: refused before --out exists
        check_max_records(Manifest.load(args.store), cfg.train)
    out = output(args.out)

    # setup: where the ranks run
    if args.workers:
        from jobs.train.ray_run import launch  # Ray Train only when asked for

        # checks only, without building the target (the workers build it): one message, not N
        module.prepare(args, cfg, out, args.workers, args.workers, build=False)
        launch(args, cfg, out)
        return
    if needs_launch(args):
        # fail here with one message rather than in every rank under torchrun's tracebacks
        module.prepare(args, cfg, out, world_size(args), None, build=False)
        sys.exit(relaunch(args))
    train_rank(args, cfg)


def train_rank(args, cfg, ray_run=None) -> None:
    """One rank of a run: this process alone, a torchrun rank, or a Ray Train worker
    (`ray_run`: jobs.train.ray_run.RayRun, which fixes the data shares, says where to resume
    and saves checkpoints through Ray Train)."""
    module, task_class = TRAINERS[args.method]
    accelerator = make_accelerator(cfg.train)  # precision, grad_accum, FSDP (jobs.train.accel)
    rank, world = accelerator.process_index, accelerator.num_processes
    out = output(args.out)
    shares = None if ray_run is None else ray_run.shares
    prepared = module.prepare(args, cfg, out, world, shares, restarted=ray_run is not None)
    task = task_class(args, cfg, accelerator, prepared)
    # workers collate: a batch crosses to the trainer as 2 shared-memory tensors and a few small
    # pickled arrays, so the trainer's side of the hand-over is cheap (engine.stream.collate)
    stream = record_stream(
        args.store, cfg.train, rank, world, task.batch_size, task.seed, shares=shares
    )
    resume_from = prepared.resume_from if ray_run is None else ray_run.resume_from(prepared)
    position, progress = Position(), {}
    if resume_from is not None:
        progress = resume(accelerator, out, resume_from, task.gen)
        position = Position(progress["step"], progress["epoch"], progress["batches_done"])
    checkpoints: Checkpoints = (
        LocalCheckpoints(out, prepared.signature)
        if ray_run is None
        else ray_run.checkpoints(accelerator, prepared.signature, progress)
    )
    accelerator.print(
        f"training {task.summary} on {sum(s.records for s in stream.shards)} records, "
        f"world size {world}, {len(stream)} batches/epoch per rank, "
        f"{cfg.train.grad_accum} per step"
    )
    step = fit(task, accelerator, stream, out, position, checkpoints, cfg.train.loader_workers, {})
    meta = {
        "target": target_id(args.target),
        "target_dir": str(args.target),
        "store": str(args.store),
        "steps": step,
        "world_size": world,
    }
    if ray_run is not None:
        meta["attempts"] = checkpoints.attempts
    task.finish(args, cfg, step, meta)
