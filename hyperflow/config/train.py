"""The `train` (drift network) and `smat` sections."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, model_validator

from hyperflow.config import registries
from hyperflow.config.base import (
    BadKey,
    Float,
    NonEmptyStr,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Section,
    registry,
)

Dim = PosInt | None  # an explicit drift dimension, or None: the size preset's


def _no_is_false(value):
    # YAML 1.1 reads `--set train.mixed_precision=no` as false
    return "no" if value is False else value


class DriftTrainConfig(Section):
    # preset: small | base | large (a key of hyperflow/drift/sizes.py DRIFT_SIZES)
    size: Annotated[str, registry(registries.drift_sizes)] = "small"
    # explicit drift dimensions override the preset's; null: the preset's value
    layer_dim: Dim = None  # per-layer token width d
    width: Dim = None  # trunk width w
    depth: Dim = None  # FiLM blocks in the trunk
    task_dim: Dim = None  # task embedding size
    time_dim: Dim = None  # Fourier features of t (even: sin and cos of time_dim / 2 frequencies)
    encoder: NonEmptyStr = "target"  # "target" (frozen backbone) or a timm name trained with it
    interpolant: Annotated[str, registry(registries.interpolants)] = "piecewise_cubic"
    site_stats: bool = True  # condition on per-bias activation statistics (encoder=target only)
    # the task embedding also reads a per-layer summary of the site statistics (needs site_stats)
    task_stats: bool = False
    theta_noise: NonNegFloat = 0.0  # off-path perturbation of theta(t), in per-layer scales
    steps: PosInt = 1500
    batch_size: PosInt = 32
    lr: PosFloat = 1e-3
    weight_decay: NonNegFloat = 1e-4
    warmup: NonNegInt = 50
    grad_clip: NonNegFloat = 1.0  # 0: off
    # micro-batches of batch_size per optimizer step (per rank); steps counts optimizer steps
    grad_accum: PosInt = 1
    # no | bf16 (autocast, runs on CPU) | fp16 (GPU only: check_train_runtime) (Accelerate)
    mixed_precision: Annotated[
        str, BeforeValidator(_no_is_false), registry(lambda: registries.PRECISIONS)
    ] = "no"
    fsdp: bool = False  # shard parameters, gradients and optimizer state over ranks (FSDP2)
    checkpoint_every: PosInt = 500
    shuffle_buffer: PosInt = 256
    # frozen-encoder inputs (features, site statistics) kept per record id, LRU, per rank
    cache_bytes: NonNegInt = 2 * 1024**3  # 0: no cache
    # train on the store's first N records in manifest order (0: all of them); prefixes nest, so
    # a scaling curve's smaller data sizes are subsets of its larger ones (SMAT uses it too)
    max_records: NonNegInt = 0
    cache_records: NonNegInt | None = None  # optional further bound in records (older configs)
    loader_workers: NonNegInt = 1
    format: Annotated[str, registry(lambda: registries.STORES)] = "wds"
    seed: NonNegInt = 0
    # Ray Train (drift and SMAT training)
    workers: NonNegInt = 0  # training workers; 0: no Ray Train (torchrun / a single process)
    min_workers: NonNegInt = 0  # fewest workers to keep training with (elastic); 0: workers
    cpus_per_worker: PosFloat = 1.0  # CPUs reserved per training worker
    gpus_per_worker: NonNegFloat = 0.0  # GPUs per training worker (0: CPU; fractions share one)
    max_failures: NonNegInt = 3  # worker-group failures survived by restarting from a checkpoint
    placement_timeout: PosFloat = 300.0  # seconds to wait for the workers' resources

    @model_validator(mode="after")
    def _consistent(self) -> DriftTrainConfig:
        if self.time_dim is not None and self.time_dim % 2:
            raise BadKey("time_dim", f"must be even (sin and cos pairs), got {self.time_dim}")
        if self.site_stats and self.encoder != "target":
            raise BadKey(
                "site_stats",
                f"must be false with train.encoder={self.encoder!r}: site statistics are read "
                "from the target backbone (set train.site_stats=false)",
            )
        if self.task_stats and not self.site_stats:
            raise BadKey("task_stats", "needs train.site_stats=true: it pools the site statistics")
        if self.fsdp and self.encoder != "target":
            # untested; and unlike DDP, FSDP would not keep a trained encoder's BatchNorm running
            # statistics equal across ranks (DDP broadcasts rank 0's buffers every forward)
            raise BadKey("fsdp", f"needs train.encoder=target, got encoder {self.encoder!r}")
        if self.min_workers and not self.workers:
            raise BadKey(
                "min_workers",
                f"needs train.workers >= 1 (0 means no Ray Train), got {self.min_workers}",
            )
        if self.min_workers > self.workers > 0:
            raise BadKey(
                "min_workers", f"must be <= train.workers={self.workers}, got {self.min_workers}"
            )
        return self


class SmatTrainConfig(Section):
    """`hyperflow train --method smat` (hyperflow/smat). Streaming (train.format,
    train.shuffle_buffer, train.loader_workers) and Ray Train (train.workers, ...) are shared
    with the drift trainer."""

    experts: PosInt = 8  # M, paper (num_experts: 8)
    # share of non-zero gates per expert, in (0, 1); paper: sparsity target 0.9 = 1 - tau
    tau: Annotated[Float, Field(gt=0, lt=1)] = 0.1
    kd_weight: NonNegFloat = 1 / 3  # KD / CE; paper: (1 - lam) CE + lam KD, lam = 0.25
    temperature: PosFloat = 2.0  # KD temperature, paper
    width: PosInt = 128  # router hidden width (ours)
    steps: PosInt = 1000
    batch_size: PosInt = 8  # episodes per rank and step (paper: 4)
    # Adam in the bias space: the paper's SGD learning rates do not transfer (ours)
    lr: PosFloat = 1e-3  # dense delta and router
    gate_lr: PosFloat = 0.05  # gates' log_alpha (the paper gives the masks a much larger lr)
    weight_decay: NonNegFloat = 0.0  # paper
    warmup: NonNegInt = 50
    grad_clip: NonNegFloat = 5.0  # paper (max_grad_norm: 5); 0: off
    checkpoint_every: PosInt = 500
    seed: NonNegInt = 0
