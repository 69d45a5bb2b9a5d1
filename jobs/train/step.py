"""One optimizer step of a trainer with gradient accumulation (train.grad_accum = k).

The loader's batches are grouped k at a time; each group is one optimizer step: k forward and
backward passes under `accelerator.accumulate` (DDP and FSDP skip the gradient all-reduce for the
first k - 1; `accelerator.backward` divides each micro-batch's loss by k, so the accumulated
gradient is the mean over the micro-batches), then gradient clipping, the optimizer step, the
schedule step and zero_grad, once. train.steps, the schedule, checkpoints and log rows therefore
all count optimizer steps; a checkpoint follows a whole group, so resume restarts at a group
boundary. With equal micro-batches the step equals one on their union (tested); a short last batch
of a rank's epoch weighs as much as a full one, as it does without accumulation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
from accelerate import Accelerator

T = TypeVar("T")


def groups(items: Iterable[T], k: int) -> Iterator[list[T]]:
    """Consecutive groups of k items (the trainer's loader never ends, so none is short)."""
    group: list[T] = []
    for item in items:
        group.append(item)
        if len(group) == k:
            yield group
            group = []


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    opt,
    sched,
    micro_batches: list[T],
    loss_of: Callable[[T], torch.Tensor],
    grad_clip: float,
) -> float:
    """One optimizer step over `micro_batches` (as many as accelerator.gradient_accumulation_steps)
    of the prepared `model`; returns the mean of their losses."""
    k = accelerator.gradient_accumulation_steps
    assert len(micro_batches) == k, f"{len(micro_batches)} micro-batches for grad_accum={k}"
    losses = []
    for item in micro_batches:
        with accelerator.accumulate(model):
            loss = loss_of(item)
            accelerator.backward(loss)  # (loss / k).backward()
            losses.append(loss.detach().float())
            if accelerator.sync_gradients:
                if grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                sched.step()  # the trainer's Accelerator steps it only here (once per step)
                opt.zero_grad()
    # Accelerate counts micro-batches since the run (or its checkpoint) began; a checkpoint
    # after every group keeps that count a multiple of k, so the last one synced
    assert accelerator.sync_gradients, "the optimizer step did not fall on the group's end"
    return torch.stack(losses).mean().item()
