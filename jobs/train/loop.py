"""The one training loop of `hyperflow train`, for the drift network and for SMAT alike.

A `Task` says what is trained (its prepared objective, optimizer, schedule and the loss of one
micro-batch); the loop does the rest, the same way under torchrun ranks and Ray Train workers:
one DataLoader over all epochs of the rank's RecordStream (engine.stream.EpochStream), one
optimizer step per group of train.grad_accum micro-batches (jobs.train.step), one JSONL log row
per step, a checkpoint every `checkpoint_every` steps and at the last one (`Checkpoints`, local
files or Ray Train reports), and exact resume from a (step, epoch, batch) position.

Each micro-batch's loss is weighted by the rank's share of the step's records (world size x its
records / records of the step over every rank): DDP averages ranks, so the step's gradient is the
mean over all its records even when ranks hold unequal parts (an elastic run on fewer workers
than data shares, or a short last batch). With equal parts the weight is exactly 1.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm

from engine.storage import Location
from engine.stream import EpochStream, RecordStream
from jobs.train.data import loader as loader_of
from jobs.train.state import StepLog, write_row
from jobs.train.step import groups, optimizer_step

SEEN_ENV = "HYPERFLOW_TRAIN_SEEN"  # "1": each rank logs the record ids of every step


class Task(Protocol):
    """What one trainer trains: prepared by Accelerate before the loop starts."""

    name: str  # progress-bar label: "train" or "smat"
    steps: int  # optimizer steps of the whole run
    checkpoint_every: int
    grad_clip: float  # 0: off
    objective: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator  # this rank's t samples / augmentations; saved in every checkpoint

    def loss(self, batch: dict) -> torch.Tensor:
        """The mean loss of one collated micro-batch (engine.stream.collate)."""

    def log_fields(self) -> dict:
        """Extra fields for the step's log row (from the last micro-batch)."""


class Checkpoints(Protocol):
    def save(self, accelerator, step: int, epoch: int, start: int, gen: torch.Generator) -> None:
        """Store a complete checkpoint at `step` whose data position is (epoch, start)."""


@dataclass
class Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    start: int = 0  # batches of `epoch` already trained on


def fit(
    task: Task,
    accelerator,
    stream: RecordStream,
    out: Location,
    position: Position,
    checkpoints: Checkpoints,
    loader_workers: int,
    log_extra: dict,
) -> int:
    """Train `task` from `position` to task.steps; returns the last step reached."""
    rank, world = accelerator.process_index, accelerator.num_processes
    step = position.step
    log = StepLog(out, "train_log.jsonl", step) if accelerator.is_main_process else None
    seen = StepLog(out, f"seen-rank{rank}.jsonl", step) if os.environ.get(SEEN_ENV) == "1" else None
    bar = tqdm(total=task.steps, initial=step, desc=task.name, disable=not log)
    loader = loader_of(EpochStream(stream, position.epoch, position.start), loader_workers)

    def loss_of(item: tuple[int, int, dict]) -> torch.Tensor:
        batch = item[2]
        weight = len(batch["ids"]) * world / batch["records_in_step"]  # module docstring
        return task.loss(batch) * weight

    wait_start = time.perf_counter()
    if step < task.steps:
        for group in groups(loader, accelerator.gradient_accumulation_steps):
            waited = time.perf_counter() - wait_start
            t0, cpu0 = time.perf_counter(), time.process_time()
            loss = optimizer_step(
                accelerator, task.objective, task.opt, task.sched, group, loss_of, task.grad_clip
            )
            step += 1
            epoch, i, _ = group[-1]
            row = {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                **task.log_fields(),
                "lr": task.sched.get_last_lr()[0],
                "data_wait_s": waited,
                "step_s": time.perf_counter() - t0,
                # CPU time of this process in the step: far below step_s = starved of cores
                "step_cpu_s": time.process_time() - cpu0,
                "world": world,
                "world_size": world,
                **log_extra,
            }
            write_row(log, row)
            for e, j, batch in group:
                write_row(seen, {"step": step, "epoch": e, "batch": j, "ids": batch["ids"]})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % task.checkpoint_every == 0 or step == task.steps:
                # a checkpoint after an epoch's last batch points at the next epoch's start
                position = (epoch + 1, 0) if i + 1 == len(stream) else (epoch, i + 1)
                for f in (log, seen):  # the rows up to here are stored before the checkpoint
                    if f is not None:
                        f.sync()
                checkpoints.save(accelerator, step, *position, task.gen)
            if step >= task.steps:
                break
            wait_start = time.perf_counter()
    bar.close()  # (the loop's iterator, dropped at the break, has stopped the loader workers)
    for f in (log, seen):
        if f is not None:
            f.close()
    accelerator.wait_for_everyone()
    return step
