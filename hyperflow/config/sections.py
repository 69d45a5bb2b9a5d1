"""Config sections of the target model, the data, episodes, pretraining and gradient adaptation."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from hyperflow.config import registries
from hyperflow.config.base import (
    NonEmptyStr,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Section,
    registry,
)

TunedMethod = Annotated[str, registry(registries.tuned_methods)]
LrGrid = Annotated[list[PosFloat], Field(min_length=1)]


class TargetConfig(Section):
    backbone: NonEmptyStr = "test_resnet"  # any name timm.create_model accepts (checked there)
    channels: Annotated[int, registry(lambda: (1, 3))] = 1  # grey or RGB (loaders convert)
    image_size: Annotated[int, Field(ge=4)] = 32  # smaller leaves the backbone nothing to pool
    checkpoint: str | None = None  # local weights file for the backbone (no hub downloads here)
    include: list[str] = Field(default_factory=lambda: ["*.bias"])  # bias patterns -> theta
    exclude: list[str] = Field(default_factory=list)
    init_scale: PosFloat = 10.0  # initial ProtoNet logit scale (cosine logits times this)


class DataConfig(Section):
    dataset: NonEmptyStr = "glyphs"  # dataset spec: glyphs | folder:PATH
    cache_dir: str | None = None  # None: $HYPERFLOW_CACHE or ~/.cache/hyperflow

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, spec: str) -> str:
        # the loader checks its argument (folder:PATH must exist); here only the kind
        valid = registries.datasets()
        if spec.partition(":")[0] not in valid:
            raise ValueError(f"must name a dataset kind of {sorted(valid)} (glyphs, folder:PATH)")
        return spec


class EpisodeConfig(Section):
    way: PosInt = 5
    shot: PosInt = 5
    query: PosInt = 15
    variable: bool = False  # Meta-Dataset-style variable way/shot


class PretrainConfig(Section):
    epochs: PosInt = 30
    max_seconds: PosFloat = 240.0  # wall-clock cap; the quickstart must stay fast on 2 cores
    batch_size: PosInt = 128
    lr: PosFloat = 2e-3
    weight_decay: NonNegFloat = 5e-4
    seed: NonNegInt = 0
    # Ray Train (same meanings as the train section's keys of the same names)
    cpus_per_worker: PosFloat = 1.0  # CPUs reserved per training worker
    gpus_per_worker: NonNegFloat = 0.0  # GPUs per training worker (0: CPU; fractions share one)
    max_failures: NonNegInt = 3  # worker-group failures survived by restarting from a checkpoint
    placement_timeout: PosFloat = 300.0  # seconds to wait for the workers' resources


class AdaptConfig(Section):
    steps: PosInt = 20  # T: Adam steps of every gradient method and of every trajectory
    lr: dict[TunedMethod, PosFloat] = Field(default_factory=dict)  # fixed lr; missing: grid
    lr_grid: LrGrid = Field(default_factory=lambda: [3e-3, 1e-2, 3e-2, 1e-1])
    full_lr_grid: LrGrid = Field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    val_episodes: PosInt = 4  # per held-out domain, disjoint seeds from the evaluation episodes
