"""`hyperflow train --method smat`: meta-train SMAT (hyperflow/smat) from a trajectory store.

The drift trainer's machinery, reused: each rank streams its fixed share of the store
(engine.stream, train.format / shuffle_buffer / loader_workers), Accelerate wraps the objective
(DDP across torchrun ranks, `--nproc`, jobs.launch), checkpoints and `--resume` are
jobs.train_state's (same layout, same exact mid-epoch resume), train_log.jsonl has one row per
step. What differs is the objective: a record gives SMAT one task, its support set and its
teacher, the record's bias-tuned endpoint theta_T (hyperflow/smat/objective.py). Settings come
from the config's `smat` section. Writes DIR/smat.safetensors and DIR/smat.json (config, target
id, layout hash, steps, world size), which `hyperflow evaluate --smat DIR` loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from engine.manifest import Manifest, config_hash
from engine.stream import EpochStream, split_support
from hyperflow.config import SmatTrainConfig, load_config, to_dict
from hyperflow.errors import UserError
from hyperflow.model import load_target, target_id
from hyperflow.smat import Smat, SmatConfig, SmatEpisode, SmatObjective, save_smat
from jobs.common import output, source
from jobs.launch import needs_launch, relaunch, world_size
from jobs.train_data import loader as loader_of
from jobs.train_data import record_stream, warmup_cosine
from jobs.train_state import (
    StepLog,
    check_max_records,
    check_store,
    checkpoint_to_resume,
    resume,
    save_checkpoint,
    write_row,
)

# smat.* keys a resumed run must share with its checkpoint (smat.steps may grow)
SIGNED = ("experts", "tau", "kd_weight", "temperature", "width", "batch_size", "lr", "gate_lr")
SIGNED += ("weight_decay", "warmup", "seed")


def run(args: argparse.Namespace) -> None:
    # config: every bad value fails before --out is created
    cfg = load_config(args.config, args.set)
    tc, sc = cfg.train, cfg.smat
    smat_cfg = smat_config(sc)
    source(args.target, "--target")
    source(args.store, "--store")
    if tc.max_records:  # a subset larger than the store: refused before --out is created
        check_max_records(Manifest.load(args.store), tc)
    out = output(args.out)
    if needs_launch(args):
        _preflight(args, tc, sc, out, world_size(args))  # one message, not one per rank
        sys.exit(relaunch(args))

    # setup: float32 (train.mixed_precision, grad_accum and fsdp are the drift trainer's); the
    # schedule counts optimizer steps, not steps x ranks (Accelerate's default), as train.py's
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    model, signature, resume_from = _preflight(args, tc, sc, out, world)
    model = model.to(accelerator.device)
    set_seed(sc.seed)  # the same initial SMAT on every rank
    smat = Smat(smat_cfg, model.layout.size, model.feature_dim)
    gen = torch.Generator().manual_seed(sc.seed * 1000 + rank)  # gates and augmentations
    groups = smat.param_groups(sc.lr, sc.gate_lr)
    for g in groups:  # decay pulls the dense delta to 0; on log_alpha it would bias the gates
        g["weight_decay"] = sc.weight_decay if g["name"] == "dense" else 0.0
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(sc.warmup, sc.steps))
    objective, opt, sched = accelerator.prepare(SmatObjective(model, smat), opt, sched)
    core = accelerator.unwrap_model(objective)
    stream = record_stream(args.store, tc, rank, world, sc.batch_size, sc.seed)
    step, epoch, start = 0, 0, 0
    if resume_from is not None:
        step, epoch, start = resume(accelerator, out, resume_from, gen)
    accelerator.print(
        f"training SMAT ({sc.experts} experts, tau {sc.tau}) on "
        f"{sum(s.records for s in stream.shards)} records, world size {world}, "
        f"{len(stream)} steps/epoch per rank"
    )
    log = StepLog(out, "train_log.jsonl", step) if accelerator.is_main_process else None

    # loop: the drift trainer's loader (one DataLoader over all epochs) at SMAT's batch size
    bar = tqdm(total=sc.steps, initial=step, desc="smat", disable=not accelerator.is_main_process)
    loader = loader_of(
        EpochStream(stream, epoch, start), dataclasses.replace(tc, batch_size=sc.batch_size)
    )
    wait_start = time.perf_counter()
    if step < sc.steps:
        for epoch, i, batch in loader:  # i: batch index within the epoch
            waited = time.perf_counter() - wait_start
            t0 = time.perf_counter()
            loss = objective(_episodes(batch), gen)
            opt.zero_grad()
            accelerator.backward(loss.total)
            if sc.grad_clip > 0:
                accelerator.clip_grad_norm_(objective.parameters(), sc.grad_clip)
            opt.step()
            sched.step()
            step += 1
            row = {
                "step": step,
                "epoch": epoch,
                "loss": loss.total.item(),
                "ce": loss.ce.item(),
                "kd": loss.kd.item(),
                "sparsity": loss.sparsity.item(),
                "density": loss.density.tolist(),  # [M] expected share of non-zero gates
                "lr": sched.get_last_lr()[0],
                "data_wait_s": waited,
                "step_s": time.perf_counter() - t0,
                "world": world,
            }
            write_row(log, row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if step % sc.checkpoint_every == 0 or step == sc.steps:
                # a checkpoint after an epoch's last batch points at the next epoch's start
                position = (epoch + 1, 0) if i + 1 == len(stream) else (epoch, i + 1)
                if log is not None:  # the rows up to here are stored before the checkpoint
                    log.sync()
                save_checkpoint(accelerator, out, step, *position, signature, gen)
            if step >= sc.steps:
                break
            wait_start = time.perf_counter()
    bar.close()
    if log is not None:
        log.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        extra = {
            "target": target_id(args.target),
            "target_dir": str(args.target),
            "store": str(args.store),
            "steps": step,
            "world_size": world,
            "smat_config": to_dict(cfg)["smat"],
        }
        save_smat(core.smat, model, out.url, extra)
        density = core.smat.gates.density().tolist()
        print(f"wrote {out.url}/smat.safetensors ({step} steps, non-zero gates {density})")


def smat_config(sc: SmatTrainConfig) -> SmatConfig:
    """The model's SmatConfig from the `smat` config section; UserError naming a bad key."""
    checks = [
        ("experts", sc.experts >= 1, ">= 1"),
        ("tau", 0.0 < sc.tau < 1.0, "in (0, 1): the share of non-zero gates"),
        ("kd_weight", sc.kd_weight >= 0, ">= 0"),
        ("temperature", sc.temperature > 0, "> 0"),
        ("width", sc.width >= 1, ">= 1"),
        ("steps", sc.steps >= 1, ">= 1"),
        ("batch_size", sc.batch_size >= 1, ">= 1"),
        ("lr", sc.lr > 0, "> 0"),
        ("gate_lr", sc.gate_lr > 0, "> 0"),
        ("weight_decay", sc.weight_decay >= 0, ">= 0"),
        ("warmup", sc.warmup >= 0, ">= 0"),
        ("grad_clip", sc.grad_clip >= 0, ">= 0 (0: off)"),
        ("checkpoint_every", sc.checkpoint_every >= 1, ">= 1"),
    ]
    for key, ok, need in checks:
        if not ok:
            raise UserError(f"smat.{key} must be {need}, got {getattr(sc, key)!r}")
    return SmatConfig(sc.experts, sc.tau, sc.kd_weight, sc.temperature, sc.width)


def _preflight(args, tc, sc: SmatTrainConfig, out, world: int):
    """Target, store and checkpoints checked before any work: (model, run signature,
    checkpoint to resume from or None)."""
    model = load_target(args.target)
    manifest = check_store(args.store, args.target, model, tc.format)
    check_max_records(manifest, tc)
    signature = {
        "method": "smat",
        **{f"smat.{k}": getattr(sc, k) for k in SIGNED},
        "world_size": world,
        "train.shuffle_buffer": tc.shuffle_buffer,
        "train.format": tc.format,
        "train.max_records": tc.max_records,
        "store records": sum(s.records for s in manifest.shards_of(tc.format)),
        "store config": config_hash(manifest.config),
    }
    return model, signature, checkpoint_to_resume(out, signature, args.resume)


def _episodes(batch: dict) -> list[SmatEpisode]:
    """One SMAT task per record: its support set and its teacher theta_T (batch theta
    [B, T+1, P] float32)."""
    xs, ys = split_support(batch)
    return [SmatEpisode(x, y, theta[-1]) for x, y, theta in zip(xs, ys, batch["theta"])]
