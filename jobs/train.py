"""`hyperflow train`: fit a drift network to a trajectory store with Accelerate.

Each rank streams its own disjoint share of the store (engine.stream.RecordStream: every record once
per epoch across ranks, equal batch counts per rank), through one DataLoader over all epochs
(engine.stream.EpochStream); the stream is NOT passed to accelerator.prepare, which would split it
a second time. `--nproc N` on a machine without a launcher
checks the inputs, then re-executes this command under torchrun (gloo on CPU).

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
import math
import os
import signal
import subprocess
import sys
import time

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine.stores import read_records
from engine.stream import EpochStream, RecordStream, collate, keep, split_support
from hyperflow.config import load_config, to_dict
from hyperflow.drift import DriftConfig, DriftNet, fit_normalizer_from_knots, save_drift
from hyperflow.drift.objective import drift_loss
from hyperflow.errors import UserError
from hyperflow.model import target_id
from jobs.common import add_config_args, output, positive_int, source
from jobs.train_inputs import SupportCache, support_inputs
from jobs.train_state import StepLog, preflight, resume, save_checkpoint, write_row

NORMALIZER_RECORDS = 256  # records (in manifest order, the same on every rank) for normalisers
SEEN_ENV = "HYPERFLOW_TRAIN_SEEN"  # "1": each rank logs the record ids of every step


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--store", required=True, help="a store written by `hyperflow collect` (or URL)")
    p.add_argument("--target", required=True, help="the target the store was collected with")
    p.add_argument(
        "--out", required=True, help="directory or URL for checkpoints, log and drift weights"
    )
    p.add_argument("--interpolant", help="override train.interpolant")
    p.add_argument(
        "--nproc", type=positive_int, default=1, help="processes (torchrun, gloo on CPU)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")


def run(args: argparse.Namespace) -> None:
    # config
    cfg = load_config(args.config, args.set)
    tc = cfg.train
    interpolant = args.interpolant or tc.interpolant
    if tc.cache_records < 0:
        raise UserError(f"train.cache_records must be >= 0 (0: no cache), got {tc.cache_records}")
    if tc.theta_noise < 0:
        raise UserError(f"train.theta_noise must be >= 0, got {tc.theta_noise}")
    drift_cfg = DriftConfig(tc.size, tc.encoder, interpolant, tc.site_stats)
    drift_cfg.validate()  # before --out is created: a bad drift setting writes nothing
    # unreadable inputs or an unwritable --out (path, bucket, credentials) fail here, exit 2
    source(args.target, "--target")
    source(args.store, "--store")
    out = output(args.out)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        # fail here with one message rather than in every rank under torchrun's tracebacks
        preflight(args, tc, interpolant, out, args.nproc)
        sys.exit(_relaunch(args))

    # setup
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=tc.mixed_precision,
        # train.steps counts optimizer steps; by default Accelerate would advance the schedule
        # num_processes times per step, so 2 ranks would finish it at half the steps
        step_scheduler_with_optimizer=False,
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    model, manifest, signature, resume_from = preflight(args, tc, interpolant, out, world)
    horizon = int(manifest.config["steps"])
    set_seed(tc.seed + rank)
    net = DriftNet(
        model.layout,
        drift_cfg,
        model.backbone,
        model.feature_dim,
        horizon,
    )
    # the same generator on every rank, so every rank computes the same normalisers
    _fit_normalizers(
        net, model, args.store, tc.format, interpolant, torch.Generator().manual_seed(tc.seed)
    )
    gen = torch.Generator().manual_seed(tc.seed * 1000 + rank)  # t samples; per rank
    opt = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(tc.warmup, tc.steps))
    objective, opt, sched = accelerator.prepare(
        _Objective(net, interpolant, tc.theta_noise), opt, sched
    )
    core = accelerator.unwrap_model(objective)
    # workers collate: a batch crosses to the trainer as 2 shared-memory tensors and a few small
    # pickled arrays, so the trainer's side of the hand-over is cheap (engine.stream.collate)
    stream = RecordStream(
        args.store,
        tc.format,
        rank,
        world,
        tc.batch_size,
        tc.seed,
        shuffle_buffer=tc.shuffle_buffer,
    )
    step, epoch, start = 0, 0, 0
    if resume_from is not None:
        step, epoch, start = resume(accelerator, out, resume_from, gen)
    accelerator.print(
        f"training drift ({tc.size}, {interpolant}) on {sum(s.records for s in stream.shards)} "
        f"records, world size {world}, {len(stream)} steps/epoch per rank"
    )
    log = StepLog(out, "train_log.jsonl", step) if accelerator.is_main_process else None
    seen = StepLog(out, f"seen-rank{rank}.jsonl", step) if os.environ.get(SEEN_ENV) == "1" else None
    cache = SupportCache(tc.cache_records)  # frozen encoder: (features, site stats) per record

    # loop: one loader for the whole run (EpochStream), its workers read ahead across epochs
    bar = tqdm(total=tc.steps, initial=step, desc="train", disable=not accelerator.is_main_process)
    loader = _loader(EpochStream(stream, epoch, start), tc)
    wait_start = time.perf_counter()
    if step < tc.steps:
        for epoch, i, batch in loader:  # i: batch index within the epoch
            waited = time.perf_counter() - wait_start
            t0, cpu0, misses = time.perf_counter(), time.process_time(), cache.misses
            with accelerator.autocast():
                features, stats = support_inputs(core.net, model, batch, cache)
                loss = objective(
                    batch["theta"].to(accelerator.device),
                    features,
                    [y.to(accelerator.device) for y in split_support(batch)[1]],
                    stats,
                    gen,
                )
            opt.zero_grad()
            accelerator.backward(loss)
            if tc.grad_clip > 0:
                accelerator.clip_grad_norm_(objective.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            step += 1
            row = {
                "step": step,
                "epoch": epoch,
                "loss": loss.item(),
                "lr": sched.get_last_lr()[0],
                "data_wait_s": waited,
                "step_s": time.perf_counter() - t0,
                # CPU time of this process in the step: far below step_s = starved of cores
                "step_cpu_s": time.process_time() - cpu0,
                "encoded": cache.misses - misses,  # records through the frozen encoder
                "world": world,
            }
            write_row(log, row)
            write_row(seen, {"step": step, "epoch": epoch, "batch": i, "ids": batch["ids"]})
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
    if accelerator.is_main_process:
        extra = {
            "target": target_id(args.target),
            "target_dir": str(args.target),
            "store": str(args.store),
            "steps": step,
            "world_size": world,
            "train_config": to_dict(cfg)["train"],
        }
        save_drift(core.net, out.url, extra)
        print(f"wrote {out.url}/drift.safetensors ({interpolant}, {step} steps)")


def _loader(stream: EpochStream, tc) -> DataLoader:
    if not tc.loader_workers:
        return DataLoader(stream, batch_size=None, collate_fn=keep)
    # Batches cross from workers as shared-memory tensors. The default "file_descriptor"
    # strategy passes each tensor's fd over a socket: ~1 ms per tensor on the trainer's side,
    # measured here, 6 ms per 5-tensor batch against 1.8 ms with named segments (torch's
    # shm manager still unlinks them when the processes exit); 2 tensors: ~1 ms.
    torch.multiprocessing.set_sharing_strategy("file_system")
    # Each worker's first batch of an epoch needs ~shuffle_buffer / workers records read first:
    # let it run that far ahead so the read hides behind steps instead of stalling one.
    ahead = math.ceil(tc.shuffle_buffer / (tc.batch_size * tc.loader_workers)) + 2
    workers = tc.loader_workers
    return DataLoader(
        stream, batch_size=None, num_workers=workers, prefetch_factor=ahead, collate_fn=keep
    )


def _relaunch(args: argparse.Namespace) -> int:
    """Re-run this train command under torchrun with --nproc ranks; returns its exit code."""
    argv = ["train", "--config", args.config, "--store", args.store]
    argv += ["--target", args.target, "--out", args.out]
    # no --nproc: LOCAL_RANK tells the ranks they run under torchrun, and torchrun's own argparse
    # rejects "--nproc" anywhere in its argv as an ambiguous abbreviation of --nproc-per-node
    argv += [x for kv in args.set for x in ("--set", kv)]
    argv += ["--interpolant", args.interpolant] if args.interpolant else []
    argv += ["--resume"] if args.resume else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={args.nproc}", "-m", "jobs.cli", *argv]
    print(f"launching {args.nproc} ranks: torchrun {' '.join(cmd[3:])}", flush=True)
    # torchrun runs in its own session so that a terminal's Ctrl-C reaches it once, through us;
    # SIGTERM/SIGINT/SIGHUP are passed on and we wait for it to stop its ranks, instead of dying
    # first and leaving it and the ranks behind
    proc = subprocess.Popen(cmd, start_new_session=True)
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, lambda signum, _: proc.send_signal(signum)) for s in forwarded}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _fit_normalizers(net, model, store, fmt, interpolant, gen) -> None:
    records = []
    for r in read_records(store, fmt):
        records.append(r)
        if len(records) == NORMALIZER_RECORDS:
            break
    knots = torch.stack([torch.from_numpy(r.theta).float() for r in records])  # [n, T+1, P]
    stats = None
    if net.n_stats:  # site statistics of these records' support sets, 32 episodes per pass
        chunks = [records[i : i + 32] for i in range(0, len(records), 32)]
        stats = torch.cat(
            [support_inputs(net, model, collate(c), SupportCache(0))[1] for c in chunks]
        )
    fit_normalizer_from_knots(net, knots, interpolant, gen, stats=stats)


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


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor
