"""`hyperflow train`: fit a drift network to a trajectory store with Accelerate.

Each rank streams its own disjoint share of the store (engine.stream.RecordStream: every record once
per epoch across ranks, equal batch counts per rank), through one DataLoader over all epochs
(engine.stream.EpochStream); the stream is NOT passed to accelerator.prepare, which would split it
a second time. `--nproc N` on a machine without a launcher
checks the inputs, then re-executes this command under torchrun (gloo on CPU).

Checkpoints: every train.checkpoint_every steps (and at the last step) each rank joins save_state
into DIR/checkpoints/step-N/ and adds its t-sampling generator; progress.json, written last and
atomically once every rank is done, marks the checkpoint complete. `--resume` continues the same
run from the newest complete checkpoint: same global step, same place in the epoch, same RNG
streams, so a killed-and-resumed run takes the steps an uninterrupted one would have taken. The
settings that fix the data order and the network (the "run signature") must match; train.steps may
grow (the learning-rate schedule is then re-shaped for the new total). Log rows of steps after the
checkpoint (work lost in the crash) are dropped, so DIR/train_log.jsonl stays one row per step.
A fresh run refuses a directory that already holds checkpoints.

Debug hook: with HYPERFLOW_TRAIN_SEEN=1 in the environment each rank r appends one JSON line per
step, {"step", "epoch", "batch", "ids"}, to DIR/seen-rank{r}.jsonl (the record ids it trained on);
the tests use it to check disjoint, complete epochs across real ranks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine.manifest import Manifest, config_hash
from engine.stores import read_records
from engine.stream import EpochStream, RecordStream, collate
from hyperflow.config import load_config, to_dict
from hyperflow.drift import DriftConfig, DriftNet, fit_normalizer_from_knots, save_drift
from hyperflow.drift.objective import drift_loss
from hyperflow.errors import UserError
from hyperflow.model import TargetModel, load_target, target_id
from jobs.common import add_config_args, check_out_dir, positive_int
from jobs.train_inputs import SupportCache, support_inputs

NORMALIZER_RECORDS = 256  # records (in manifest order, the same on every rank) for normalisers
SEEN_ENV = "HYPERFLOW_TRAIN_SEEN"  # "1": each rank logs the record ids of every step


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--store", required=True, help="a store written by `hyperflow collect`")
    p.add_argument("--target", required=True, help="the target the store was collected with")
    p.add_argument("--out", required=True, help="directory for checkpoints, log and drift weights")
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
    out = check_out_dir(Path(args.out))
    ckpt_root = out / "checkpoints"
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        # fail here with one message rather than in every rank under torchrun's tracebacks
        _preflight(args, tc, interpolant, ckpt_root, args.nproc)
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
    model, manifest, signature, resume_from = _preflight(args, tc, interpolant, ckpt_root, world)
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
        net, model, Path(args.store), tc.format, interpolant, torch.Generator().manual_seed(tc.seed)
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
    # workers hand over record lists (pickled numpy, one message per batch); the trainer
    # collates: a collated batch is ~2 B tensors, each its own shared-memory transfer
    stream = RecordStream(
        Path(args.store),
        tc.format,
        rank,
        world,
        tc.batch_size,
        tc.seed,
        shuffle_buffer=tc.shuffle_buffer,
        collated=False,
    )
    step, epoch, start = 0, 0, 0
    if resume_from is not None:
        step, epoch, start = _resume(accelerator, resume_from, gen)
    accelerator.print(
        f"training drift ({tc.size}, {interpolant}) on {sum(s.records for s in stream.shards)} "
        f"records, world size {world}, {len(stream)} steps/epoch per rank"
    )
    log = _open_jsonl(out / "train_log.jsonl", step) if accelerator.is_main_process else None
    seen = None
    if os.environ.get(SEEN_ENV) == "1":
        seen = _open_jsonl(out / f"seen-rank{rank}.jsonl", step)
    cache = SupportCache(tc.cache_records)  # frozen encoder: (features, site stats) per record

    # loop: one loader for the whole run (EpochStream), its workers read ahead across epochs
    bar = tqdm(total=tc.steps, initial=step, desc="train", disable=not accelerator.is_main_process)
    loader = _loader(EpochStream(stream, epoch, start), tc)
    wait_start = time.perf_counter()
    if step < tc.steps:
        for epoch, i, records in loader:  # i: batch index within the epoch
            batch = collate(records)
            waited = time.perf_counter() - wait_start
            t0, cpu0 = time.perf_counter(), time.process_time()
            with accelerator.autocast():
                features, stats = support_inputs(core.net, model, batch, cache)
                loss = objective(
                    batch["theta"].to(accelerator.device),
                    features,
                    [y.to(accelerator.device) for y in batch["labels"]],
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
                "world": world,
            }
            _write_row(log, row)
            _write_row(seen, {"step": step, "epoch": epoch, "batch": i, "ids": batch["ids"]})
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                # a checkpoint after an epoch's last batch points at the next epoch's start
                done = i + 1 == len(stream)
                position = (epoch + 1, 0) if done else (epoch, i + 1)
                _save_checkpoint(accelerator, ckpt_root, step, *position, signature, gen)
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
        save_drift(core.net, out, extra)
        print(f"wrote {out / 'drift.safetensors'} ({interpolant}, {step} steps)")


def _loader(stream: EpochStream, tc) -> DataLoader:
    if not tc.loader_workers:
        return DataLoader(stream, batch_size=None)
    # Each worker's first batch of an epoch needs ~shuffle_buffer / workers records read first:
    # let it run that far ahead so the read hides behind steps instead of stalling one.
    ahead = math.ceil(tc.shuffle_buffer / (tc.batch_size * tc.loader_workers)) + 2
    return DataLoader(stream, batch_size=None, num_workers=tc.loader_workers, prefetch_factor=ahead)


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


def _preflight(args, tc, interpolant: str, ckpt_root: Path, world: int):
    """Check target, store and checkpoints before any work; returns (model, manifest,
    run signature, checkpoint directory to resume from or None)."""
    model = load_target(args.target)
    manifest = _check_store(Path(args.store), args.target, model, tc.format)
    signature = _signature(tc, interpolant, world, manifest)
    done = _checkpoints(ckpt_root)
    if not args.resume:
        if done:
            raise UserError(
                f"--out {ckpt_root.parent} already holds checkpoints of a training run (newest "
                f"{done[-1].name}); pass --resume to continue it, or choose another --out"
            )
        return model, manifest, signature, None
    if not done:
        raise UserError(f"--resume: no complete checkpoint under {ckpt_root}")
    saved = json.loads((done[-1] / "progress.json").read_text()).get("run", {})
    for key, value in signature.items():
        if saved.get(key) != value:
            raise UserError(
                f"--resume: checkpoint {done[-1]} was written with {key}={saved.get(key)!r}, "
                f"this run has {key}={value!r}; resume with the same settings or train into "
                f"another --out"
            )
    return model, manifest, signature, done[-1]


def _signature(tc, interpolant: str, world: int, manifest: Manifest) -> dict:
    """What a resumed run must share with its checkpoint: the network's shape and objective, the
    data order (plan inputs) and what the restored optimizer would silently override."""
    return {
        "interpolant": interpolant,
        "train.size": tc.size,
        "train.encoder": tc.encoder,
        "train.site_stats": tc.site_stats,
        "train.theta_noise": tc.theta_noise,
        "world_size": world,
        "train.batch_size": tc.batch_size,
        "train.seed": tc.seed,
        "train.shuffle_buffer": tc.shuffle_buffer,
        "train.format": tc.format,
        "train.lr": tc.lr,
        "train.weight_decay": tc.weight_decay,
        "store records": sum(s.records for s in manifest.shards_of(tc.format)),
        "store config": config_hash(manifest.config),
    }


def _checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (progress.json written), oldest first."""
    return sorted(p for p in root.glob("step-*") if (p / "progress.json").is_file())


def _check_store(store: Path, target_dir: str, model: TargetModel, fmt: str) -> Manifest:
    manifest = Manifest.load(store)
    cfg = manifest.config
    if cfg.get("layout_hash") != model.layout.hash():
        raise UserError(
            f"store {store} has bias layout {cfg.get('layout_hash')}, the target "
            f"{target_dir} has {model.layout.hash()}"
        )
    if cfg.get("target") != target_id(target_dir):
        raise UserError(
            f"store {store} was collected with target {cfg.get('target')}, "
            f"not {target_dir} ({target_id(target_dir)})"
        )
    if fmt not in manifest.formats:
        raise UserError(f"store {store} holds {manifest.formats}, train.format is {fmt!r}")
    if not manifest.shards_of(fmt):
        raise UserError(f"store {store} is empty: no committed shards (run `hyperflow collect`)")
    return manifest


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


def _open_jsonl(path: Path, keep_through: int):
    """Open a per-step JSONL file for appending, first dropping rows of steps > keep_through
    (0 on a fresh run: start empty; the resumed step: forget the steps lost in a crash)."""
    rows = path.read_text().splitlines() if path.is_file() else []
    kept = [r for r in rows if r.strip() and json.loads(r)["step"] <= keep_through]
    if len(kept) != len(rows):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(r + "\n" for r in kept))
        os.replace(tmp, path)
    return open(path, "a")


def _write_row(f, row: dict) -> None:
    if f is not None:
        f.write(json.dumps(row) + "\n")
        f.flush()  # a killed run keeps every step it logged


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _save_checkpoint(accelerator, root, step, epoch, start, signature, gen) -> None:
    path = root / f"step-{step:08d}"
    accelerator.save_state(str(path))  # rank 0: model, optimizer, scheduler; every rank: RNG
    # save_state leaves custom generators out (and registered objects are saved by rank 0 only)
    gen_file = path / f"t_generator_rank{accelerator.process_index}.npy"
    np.save(gen_file, gen.get_state().numpy(), allow_pickle=False)
    accelerator.wait_for_everyone()  # save_state has no barrier: all ranks' files first
    if accelerator.is_main_process:
        progress = {"step": step, "epoch": epoch, "batches_done": start, "run": signature}
        _write_json_atomic(path / "progress.json", progress)  # marks the checkpoint complete
    accelerator.wait_for_everyone()


def _resume(accelerator, path: Path, gen: torch.Generator) -> tuple[int, int, int]:
    """Load checkpoint `path` (signature already checked); returns (step, epoch, start batch)."""
    state = json.loads((path / "progress.json").read_text())
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"--resume: checkpoint {path} does not fit this network: {e}") from None
    gen_file = path / f"t_generator_rank{accelerator.process_index}.npy"
    if not gen_file.is_file():
        raise UserError(f"--resume: checkpoint {path} lacks {gen_file.name}")
    gen.set_state(torch.from_numpy(np.load(gen_file, allow_pickle=False)))
    accelerator.print(
        f"resumed from {path} at global step {state['step']} "
        f"(epoch {state['epoch']}, batch {state['batches_done']})"
    )
    return state["step"], state["epoch"], state["batches_done"]
