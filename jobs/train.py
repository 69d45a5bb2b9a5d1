"""`hyperflow train`: fit a drift network to a trajectory store with Accelerate.

Each rank streams its own disjoint share of the store (engine.stream.RecordStream: every record once
per epoch across ranks, equal batch counts per rank); the stream is NOT passed to
accelerator.prepare, which would split it a second time. `--nproc N` on a machine without a launcher
re-executes this command under torchrun (gloo on CPU). Checkpoints via save_state every K steps on
all ranks; `--resume` continues from the newest one at the same global step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine.manifest import Manifest
from engine.stores import read_records
from engine.stream import RecordStream
from hyperflow.config import load_config, to_dict
from hyperflow.drift import DriftConfig, DriftNet, fit_normalizer_from_knots, save_drift
from hyperflow.drift.objective import drift_loss
from hyperflow.errors import UserError
from hyperflow.model import TargetModel, load_target, target_id
from jobs.common import add_config_args, check_out_dir, positive_int

NORMALIZER_RECORDS = 256  # records (in manifest order, the same on every rank) for normalisers


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
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        sys.exit(_relaunch(args))

    # config
    cfg = load_config(args.config, args.set)
    tc = cfg.train
    interpolant = args.interpolant or tc.interpolant
    out = check_out_dir(Path(args.out))
    ckpt_root = out / "checkpoints"

    # setup
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=tc.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(tc.seed + rank)
    model = load_target(args.target)
    manifest = _check_store(Path(args.store), args.target, model, tc.format)
    horizon = int(manifest.config["steps"])
    net = DriftNet(
        model.layout,
        DriftConfig(tc.size, tc.encoder, interpolant),
        model.backbone,
        model.feature_dim,
        horizon,
    )
    gen = torch.Generator().manual_seed(tc.seed * 1000 + rank)
    _fit_normalizers(net, Path(args.store), tc.format, interpolant, gen)
    opt = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(tc.warmup, tc.steps))
    objective, opt, sched = accelerator.prepare(_Objective(net, interpolant), opt, sched)
    core = accelerator.unwrap_model(objective)
    stream = RecordStream(
        Path(args.store),
        tc.format,
        rank,
        world,
        tc.batch_size,
        tc.seed,
        shuffle_buffer=tc.shuffle_buffer,
    )
    step, epoch, skip = 0, 0, 0
    if args.resume:
        step, epoch, skip = _resume(accelerator, ckpt_root, interpolant)
    accelerator.print(
        f"training drift ({tc.size}, {interpolant}) on {sum(s.records for s in stream.shards)} "
        f"records, world size {world}, {len(stream)} steps/epoch per rank"
    )
    log = open(out / "train_log.jsonl", "a") if accelerator.is_main_process else None
    cache: dict[str, torch.Tensor] = {}  # frozen-encoder features per record id

    # loop
    bar = tqdm(total=tc.steps, initial=step, desc="train", disable=not accelerator.is_main_process)
    while step < tc.steps:
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=None, num_workers=tc.loader_workers)
        wait_start = time.perf_counter()
        for i, batch in enumerate(loader):
            if i < skip:  # resuming mid-epoch: these batches were trained on before the stop
                wait_start = time.perf_counter()
                continue
            waited = time.perf_counter() - wait_start
            start = time.perf_counter()
            with accelerator.autocast():
                features = _features(core.net, model, batch, cache)
                loss = objective(
                    batch["theta"].to(accelerator.device),
                    features,
                    [y.to(accelerator.device) for y in batch["labels"]],
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
                "step_s": time.perf_counter() - start,
                "world": world,
            }
            if log:
                log.write(json.dumps(row) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                _save_checkpoint(accelerator, ckpt_root, step, epoch, i + 1, interpolant)
            if step >= tc.steps:
                break
            wait_start = time.perf_counter()
        epoch, skip = epoch + 1, 0
    bar.close()
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


def _relaunch(args: argparse.Namespace) -> int:
    """Re-run this train command under torchrun with --nproc ranks; returns its exit code."""
    argv = [
        "train",
        "--config",
        args.config,
        "--store",
        args.store,
        "--target",
        args.target,
        "--out",
        args.out,
    ]  # no --nproc: LOCAL_RANK tells the ranks they run under torchrun, and torchrun's own
    # argparse rejects "--nproc" anywhere in its argv as an ambiguous abbreviation
    argv += [x for kv in args.set for x in ("--set", kv)]
    argv += ["--interpolant", args.interpolant] if args.interpolant else []
    argv += ["--resume"] if args.resume else []
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "jobs.cli",
        *argv,
    ]
    print(f"launching {args.nproc} ranks: torchrun {' '.join(cmd[3:])}", flush=True)
    return subprocess.call(cmd)


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


def _fit_normalizers(net, store, fmt, interpolant, gen) -> None:
    knots = []
    for r in read_records(store, fmt):
        knots.append(torch.from_numpy(r.theta).float())
        if len(knots) == NORMALIZER_RECORDS:
            break
    fit_normalizer_from_knots(net, torch.stack(knots), interpolant, gen)


class _Objective(nn.Module):
    """The whole loss in one forward, so DDP sees (and syncs) every trained parameter."""

    def __init__(self, net: DriftNet, interpolant: str):
        super().__init__()
        self.net, self.interpolant = net, interpolant

    def forward(self, knots, features, labels, gen) -> torch.Tensor:
        # knots [B, T+1, P]; features: encoder features [sum N, F] (frozen encoder) or the
        # normalised support images [sum N, C, H, W] (trained encoder); labels: B tensors [N_i]
        if not self.net.frozen_encoder:
            features = self.net.encoder(features)
        task = self.net.pool(features.float(), labels)  # [B, D]
        return drift_loss(self.net, knots, task, self.interpolant, gen)


def _features(net: DriftNet, model: TargetModel, batch: dict, cache: dict) -> torch.Tensor:
    """Frozen encoder: features [sum N, F], computed once per record id. Otherwise the images."""
    device = net.velocity_scale.device
    if not net.frozen_encoder:
        return torch.cat([model.preprocess(x) for x in batch["support"]]).to(device)
    missing = [(i, x) for i, x in zip(batch["ids"], batch["support"]) if i not in cache]
    if missing:
        with torch.no_grad():
            feats = net.encoder(model.preprocess(torch.cat([x for _, x in missing])).to(device))
        for (i, _), f in zip(missing, feats.split([len(x) for _, x in missing])):
            cache[i] = f
    return torch.cat([cache[i] for i in batch["ids"]])


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def _save_checkpoint(accelerator, root: Path, step: int, epoch: int, batches: int, interp: str):
    path = root / f"step-{step:08d}"
    accelerator.save_state(str(path))  # every rank: each saves its own RNG state
    if accelerator.is_main_process:
        state = {
            "step": step,
            "epoch": epoch,
            "batches_done": batches,
            "interpolant": interp,
            "world_size": accelerator.num_processes,
        }
        (path / "progress.json").write_text(json.dumps(state))
    accelerator.wait_for_everyone()


def _resume(accelerator, root: Path, interpolant: str) -> tuple[int, int, int]:
    done = sorted(p for p in root.glob("step-*") if (p / "progress.json").is_file())
    if not done:
        raise UserError(f"--resume: no checkpoint under {root}")
    state = json.loads((done[-1] / "progress.json").read_text())
    if state["interpolant"] != interpolant or state["world_size"] != accelerator.num_processes:
        raise UserError(
            f"--resume: checkpoint {done[-1]} is for interpolant "
            f"{state['interpolant']!r} with {state['world_size']} ranks, this run "
            f"is {interpolant!r} with {accelerator.num_processes}"
        )
    try:
        accelerator.load_state(str(done[-1]))
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"--resume: checkpoint {done[-1]} does not fit this network: {e}") from None
    accelerator.print(f"resumed from {done[-1]} at global step {state['step']}")
    return state["step"], state["epoch"], state["batches_done"]
