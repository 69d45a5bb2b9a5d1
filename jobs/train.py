"""`hyperflow train`: fit a drift network to a trajectory store with Accelerate.

Each rank streams its own disjoint share of the store (engine.stream.RecordStream: every record once
per epoch across ranks, equal batch counts per rank), through one DataLoader over all epochs
(engine.stream.EpochStream); the stream is NOT passed to accelerator.prepare, which would split it
a second time. `--nproc N` (and `--nnodes M --rdzv-endpoint HOST:PORT` across machines) checks
the inputs, then re-executes this command under torchrun (jobs.launch; gloo on CPU).
`--method smat` trains the SMAT baseline instead, with the same machinery (jobs/train_smat.py).

train.grad_accum, train.mixed_precision and train.fsdp: jobs.train_accel (the Accelerator) and
jobs.train_step (one optimizer step of micro-batches); `hyperflow bench drift-scale` at 62M.

--out (and --store, --target) may be a local path or a URL (s3://bucket/prefix, anything fsspec
resolves; engine.storage). Checkpoints: every train.checkpoint_every steps (and at the last step)
each rank joins save_state into DIR/checkpoints/step-N/ (through a temporary local directory on
object storage, jobs.train_state) and adds its t-sampling generator; progress.json, written last and
atomically once every rank is done, marks the checkpoint complete. `--resume` continues the same
run from the newest complete checkpoint: same global step, same place in the epoch, same RNG
streams, so a killed-and-resumed run takes the steps an uninterrupted one would have taken. The
settings that fix the data order and the network (the "run signature") must match; train.steps may
grow (the learning-rate schedule is then re-shaped for the new total). Log rows of steps after the
checkpoint (work lost in the crash) are dropped, so DIR/train_log.jsonl stays one row per step
(on object storage it is rewritten at every checkpoint and at the end, jobs.train_state.StepLog).
A fresh run refuses a directory that already holds checkpoints.

Debug hook: with HYPERFLOW_TRAIN_SEEN=1 in the environment each rank r appends one JSON line per
step, {"step", "epoch", "batch", "ids"}, to DIR/seen-rank{r}.jsonl (the record ids it trained on);
the tests use it to check disjoint, complete epochs across real ranks.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import asdict

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm import tqdm

from engine.manifest import Manifest
from engine.stream import EpochStream, split_support
from hyperflow.config import load_config, to_dict
from hyperflow.drift import DriftNet, drift_config, save_drift
from hyperflow.drift.objective import drift_loss
from hyperflow.errors import UserError
from hyperflow.model import target_id
from jobs.common import add_config_args, output, source
from jobs.launch import add_launch_arguments, needs_launch, relaunch, world_size
from jobs.train_accel import (
    check_scale_settings,
    full_state,
    local_parameters,
    make_accelerator,
)
from jobs.train_data import loader as loader_of
from jobs.train_data import record_stream, warmup_cosine
from jobs.train_inputs import SupportCache, fit_normalizers, support_inputs
from jobs.train_state import (
    StepLog,
    check_max_records,
    preflight,
    resume,
    save_checkpoint,
    write_row,
)
from jobs.train_step import groups, optimizer_step

SEEN_ENV = "HYPERFLOW_TRAIN_SEEN"  # "1": each rank logs the record ids of every step


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--store", required=True, help="a store written by `hyperflow collect` (or URL)")
    p.add_argument("--target", required=True, help="the target the store was collected with")
    p.add_argument(
        "--out", required=True, help="directory or URL for checkpoints, log and drift weights"
    )
    p.add_argument(
        "--method",
        choices=("drift", "smat"),
        default="drift",
        help="drift: HyperFlow's drift network; smat: the SMAT baseline (jobs/train_smat.py)",
    )
    p.add_argument("--interpolant", help="override train.interpolant")
    add_launch_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")


def run(args: argparse.Namespace) -> None:
    if args.method == "smat":
        from jobs import train_smat  # here: train_smat imports this module's loader helpers

        return train_smat.run(args)
    # config
    cfg = load_config(args.config, args.set)
    tc = cfg.train
    interpolant = args.interpolant or tc.interpolant
    if tc.theta_noise < 0:
        raise UserError(f"train.theta_noise must be >= 0, got {tc.theta_noise}")
    if tc.max_records < 0:
        raise UserError(f"train.max_records={tc.max_records} is out of range (0: every record)")
    # before --out is created: a bad drift or scale setting writes nothing
    drift_cfg = drift_config(tc, interpolant).resolved()
    check_scale_settings(tc, int(os.environ.get("WORLD_SIZE", world_size(args))))
    # unreadable inputs or an unwritable --out (path, bucket, credentials) fail here, exit 2
    source(args.target, "--target")
    source(args.store, "--store")
    if tc.max_records:  # a subset larger than the store: refused before --out is created
        check_max_records(Manifest.load(args.store), tc)
    out = output(args.out)
    if needs_launch(args):
        # fail here with one message rather than in every rank under torchrun's tracebacks
        preflight(args, tc, interpolant, out, world_size(args))
        sys.exit(relaunch(args))

    # setup
    accelerator = make_accelerator(tc)  # precision, grad_accum, FSDP (jobs.train_accel)
    rank, world = accelerator.process_index, accelerator.num_processes
    model, manifest, signature, resume_from = preflight(args, tc, interpolant, out, world)
    horizon = int(manifest.config["steps"])
    # the same initial weights on every rank: DDP would broadcast rank 0's, FSDP shards each
    # rank's own copy (a mixture of inits if they differed)
    set_seed(tc.seed)
    net = DriftNet(
        model.layout,
        drift_cfg,
        model.backbone,
        model.feature_dim,
        horizon,
    )
    params = net.num_parameters()  # before prepare: FSDP shards them
    set_seed(tc.seed + rank)
    # the same generator on every rank, so every rank computes the same normalisers
    fit_normalizers(net, model, args.store, tc, interpolant, torch.Generator().manual_seed(tc.seed))
    gen = torch.Generator().manual_seed(tc.seed * 1000 + rank)  # t samples; per rank
    opt = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(tc.warmup, tc.steps))
    objective, opt, sched = accelerator.prepare(
        _Objective(net, interpolant, tc.theta_noise), opt, sched
    )
    core = accelerator.unwrap_model(objective)
    if tc.fsdp:
        print(f"rank {rank} holds {local_parameters(objective):,} of {params:,} parameters (FSDP)")
    # workers collate: a batch crosses to the trainer as 2 shared-memory tensors and a few small
    # pickled arrays, so the trainer's side of the hand-over is cheap (engine.stream.collate)
    stream = record_stream(args.store, tc, rank, world, tc.batch_size, tc.seed)
    step, epoch, start = 0, 0, 0
    if resume_from is not None:
        step, epoch, start = resume(accelerator, out, resume_from, gen)
    dims = ", ".join(f"{k}={v}" for k, v in asdict(drift_cfg.dims()).items())
    accelerator.print(
        f"training drift ({tc.size}: {dims}; {params:,} parameters; {interpolant}) on "
        f"{sum(s.records for s in stream.shards)} records, world size {world}, "
        f"{len(stream)} batches/epoch per rank, {tc.grad_accum} per step"
    )
    log = StepLog(out, "train_log.jsonl", step) if accelerator.is_main_process else None
    seen = StepLog(out, f"seen-rank{rank}.jsonl", step) if os.environ.get(SEEN_ENV) == "1" else None
    # frozen encoder: (features, site stats) per record
    cache = SupportCache(tc.cache_bytes, tc.cache_records)

    # loop: one loader for the whole run (EpochStream), its workers read ahead across epochs
    bar = tqdm(total=tc.steps, initial=step, desc="train", disable=not accelerator.is_main_process)
    loader = loader_of(EpochStream(stream, epoch, start), tc)

    def loss_of(item: tuple[int, int, dict]) -> torch.Tensor:
        batch = item[2]
        # the frozen encoder's inputs outside autocast (cached: computed once, in float32); the
        # objective under it (prepare() autocasts a DDP forward, not an FSDP2 one: train_accel)
        features, stats = support_inputs(core.net, model, batch, cache)
        with accelerator.autocast():
            return objective(
                batch["theta"].to(accelerator.device),
                features,
                [y.to(accelerator.device) for y in split_support(batch)[1]],
                stats,
                gen,
            )

    wait_start = time.perf_counter()
    if step < tc.steps:
        # one optimizer step per group of train.grad_accum batches (jobs.train_step)
        for group in groups(loader, tc.grad_accum):  # (epoch, batch index in it, batch) each
            waited = time.perf_counter() - wait_start
            t0, cpu0, misses = time.perf_counter(), time.process_time(), cache.misses
            loss = optimizer_step(accelerator, objective, opt, sched, group, loss_of, tc.grad_clip)
            step += 1
            epoch, i, _ = group[-1]
            row = {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "lr": sched.get_last_lr()[0],
                "data_wait_s": waited,
                "step_s": time.perf_counter() - t0,
                # CPU time of this process in the step: far below step_s = starved of cores
                "step_cpu_s": time.process_time() - cpu0,
                "encoded": cache.misses - misses,  # records through the frozen encoder
                "world": world,
                "params": params,
            }
            write_row(log, row)
            for e, j, batch in group:
                write_row(seen, {"step": step, "epoch": e, "batch": j, "ids": batch["ids"]})
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                # a checkpoint after an epoch's last batch points at the next epoch's start
                done = i + 1 == len(stream)
                position = (epoch + 1, 0) if done else (epoch, i + 1)
                for f in (log, seen):  # the rows up to here are stored before the checkpoint
                    if f is not None:
                        f.sync()
                save_checkpoint(accelerator, out, step, *position, signature, gen)
            if step >= tc.steps:
                break
            wait_start = time.perf_counter()
    bar.close()  # (the loop's iterator, dropped at the break, has stopped the loader workers)
    for f in (log, seen):
        if f is not None:
            f.close()
    accelerator.wait_for_everyone()
    state = full_state(accelerator, objective, "net.")  # every rank: FSDP gathers the shards
    if accelerator.is_main_process:
        extra = {
            "target": target_id(args.target),
            "target_dir": str(args.target),
            "store": str(args.store),
            "steps": step,
            "world_size": world,
            "train_config": to_dict(cfg)["train"],
        }
        save_drift(core.net, out.url, extra, state=state)
        print(f"wrote {out.url}/drift.safetensors ({interpolant}, {step} steps)")
    # this rank's resident-memory high-water mark (its loader workers not included)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"rank {rank}: peak RSS {peak:.0f} MB", flush=True)


class _Objective(nn.Module):
    """The whole loss in one forward, so DDP sees (and syncs) every trained parameter."""

    def __init__(self, net: DriftNet, interpolant: str, theta_noise: float):
        super().__init__()
        self.net, self.interpolant, self.theta_noise = net, interpolant, theta_noise

    def forward(self, knots, features, labels, stats, gen) -> torch.Tensor:
        # knots [B, T+1, P]; labels: B tensors [N_i]; frozen encoder: features [sum N, F] and
        # raw site stats [B, K, P] or None; trained encoder: normalised images [sum N, C, H, W]
        if not self.net.frozen_encoder:
            features, stats = self.net.support_inputs(features, labels)
        task = self.net.make_task(features, labels, stats)
        return drift_loss(self.net, knots, task, self.interpolant, gen, self.theta_noise)
