"""The Accelerator of a drift training run, the checks of its scale settings, and the full
weights of its (possibly sharded) model.

- train.mixed_precision: autocast through Accelerate ("bf16" runs on the CPU too): prepare()
  wraps a DDP (or single-rank) model's forward in it; its FSDP2 path does not, so the trainer
  enters accelerator.autocast() around the objective itself. Parameters, gradients and
  optimizer state stay float32, so checkpoints and drift.safetensors hold float32 weights.
- train.grad_accum: Accelerate's gradient_accumulation_steps; jobs.train.step runs the
  micro-batches of one optimizer step under accelerator.accumulate.
- train.fsdp: Accelerate's FSDP plugin, FSDP2 (torch fully_shard): each FiLM block and the
  per-layer in/out maps are sharded on their own, the rest with the root. Mixed precision stays
  autocast, with a float32 FSDP policy (FSDP's bf16 parameter policy would also cast the
  objective's float inputs, the trajectories, whose step-to-step differences bf16 cannot
  resolve). Checkpoints and the final weights are full state dicts gathered on rank 0.
  Accelerate 1.15 applies the plugin only to GPU-like backends: on CPU ranks (gloo) it would
  silently wrap the model in DDP instead. torch itself runs FSDP2 on CPU with gloo, and so does
  Accelerate's FSDP2 code once its state says FSDP, which `_fsdp_on_cpu` sets. That is the one
  place this module reaches into Accelerate's internals; the two-rank test in
  tests/jobs/test_train_scale.py fails if an Accelerate upgrade breaks it.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from hyperflow.errors import UserError

# modules FSDP shards on their own (hyperflow/drift/layers.py): the bulk of any large drift
FSDP_UNITS = ["FiLMBlock", "LayerwiseIn", "LayerwiseOut"]


def make_accelerator(tc) -> Accelerator:
    plugin = None
    if tc.fsdp:
        # here, not at the top: torch.distributed.fsdp costs ~0.5 s to import in every rank
        from torch.distributed.fsdp import MixedPrecisionPolicy

        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=FSDP_UNITS,
            state_dict_type="FULL_STATE_DICT",
            mixed_precision_policy=MixedPrecisionPolicy(),  # float32; autocast does bf16
            cpu_ram_efficient_loading=False,
        )
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=tc.mixed_precision,
        gradient_accumulation_steps=tc.grad_accum,
        fsdp_plugin=plugin,
        # train.steps counts optimizer steps; by default Accelerate would advance the schedule
        # num_processes times per step, so 2 ranks would finish it at half the steps
        step_scheduler_with_optimizer=False,
    )
    if plugin is not None and accelerator.distributed_type != DistributedType.FSDP:
        _fsdp_on_cpu(accelerator, plugin)
    return accelerator


def _fsdp_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    # Accelerate's state decides FSDP only for GPU-like backends (accelerate/state.py); both of
    # its shared states must say FSDP, or prepare() and save_state() disagree on the model type
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise UserError(
            f"train.fsdp=true: Accelerate chose {accelerator.distributed_type}, not FSDP"
        )
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def full_state(accelerator: Accelerator, model: torch.nn.Module, prefix: str) -> dict:
    """The full float32 state dict of the prepared `model`'s submodule at `prefix` (e.g.
    "net."), gathered from every rank when sharded: every rank must call this; under FSDP only
    rank 0 gets the tensors (the others an empty dict)."""
    state = accelerator.get_state_dict(model)
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def local_parameters(model: torch.nn.Module) -> int:
    """Parameters this rank holds: its shards under FSDP (DTensors), all of them otherwise."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
