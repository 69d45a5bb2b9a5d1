"""The `collect` section: trajectory collection, its Ray actors and active (focused) collection."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from hyperflow.config import registries
from hyperflow.config.base import (
    BadKey,
    Fraction,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Section,
    registry,
)


def _collectable(name: str) -> str:
    if name in registries.HELD_OUT_SHIFTS:
        held = ", ".join(sorted(registries.HELD_OUT_SHIFTS))
        raise ValueError(
            f"names a held-out shift family ({held} are held out from collection so the "
            "benchmark measures generalisation to shifts no trajectory saw)"
        )
    valid = registries.collection_shifts()
    if name not in valid:
        raise ValueError(f"must be one of the collection shift families {sorted(valid)}")
    return name


def _primitives_left(exclude: list[str]) -> list[str]:
    from hyperflow.data.procedural import check_exclude  # here: it imports numpy and scipy
    from hyperflow.errors import UserError

    try:
        check_exclude(exclude)
    except UserError as e:
        raise ValueError(str(e)) from None
    return exclude


def _counts(counts: list[int]) -> list[int]:
    # the bounds are procedural.MIN_PRIMITIVES and MAX_PRIMITIVES (not imported: numpy, scipy)
    if len(counts) != 2 or not 1 <= counts[0] <= counts[1] <= 4:
        raise ValueError("must be [fewest, most] with 1 <= fewest <= most <= 4")
    return counts


class CollectConfig(Section):
    episodes: PosInt = 400
    domains: list[str] = Field(default_factory=list)  # empty: every base domain
    shifts: list[Annotated[str, AfterValidator(_collectable)]] = Field(
        default_factory=lambda: ["noise", "blur", "contrast", "thick"]
    )
    # primitives the `procedural` family may not compose (ablations; hyperflow/data/primitives.py)
    procedural_exclude: Annotated[list[str], AfterValidator(_primitives_left)] = Field(
        default_factory=list
    )
    # fewest and most primitives a procedural composition draws (uniformly between them); 1
    # admits single-primitive episodes, the form every held-out shift has
    procedural_counts: Annotated[list[int], AfterValidator(_counts)] = Field(
        default_factory=lambda: [2, 4]
    )
    clean_fraction: Fraction = 0.25  # share of episodes without an on-the-fly shift
    lr_min: PosFloat = 1e-2  # per-episode lr ~ log-uniform [lr_min, lr_max]
    lr_max: PosFloat = 1e-1
    inits: PosInt = 2  # trajectories per episode, from different init noise
    sigma: NonNegFloat = 0.0  # std of Gaussian noise added to theta_0 for inits after the first
    shard_size: PosInt = 32  # episodes per shard (one actor task writes one shard)
    # zarr | wds | both: a key of engine.stores.STORES, or both of them
    format: Annotated[str, registry(registries.collect_formats)] = "both"
    theta_dtype: Annotated[str, registry(lambda: registries.THETA_DTYPES)] = "float16"
    # raw | delta | delta2 (engine/stores/encoding.py); raw keeps wds theta uncompressed, the
    # fastest to stream (half the loader CPU) for 1.5x the wds bytes of delta2
    theta_encoding: Annotated[str, registry(lambda: registries.THETA_ENCODINGS)] = "delta2"
    workers: PosInt = 2
    cpus_per_worker: PosFloat = 1.0  # Ray resources of one collection actor; torch threads match
    gpus_per_worker: NonNegFloat = 0.0  # fractions let several simulators share one GPU
    # seconds an actor may wait for a node with its resources before the job ends, naming them
    placement_timeout: PosFloat = 300.0
    # actor deaths a job survives: this share of its shards (at least 8); each death is logged
    replace_fraction: Fraction = 0.25
    seed: NonNegInt = 0
    # `hyperflow collect --focus DRIFT`: the store holds the uniform episodes 0..focus_prefix-1
    # (set it to the episodes the drift was trained on: old data + new batch, nested prefixes),
    # then the `episodes` candidates where the drift adapts worst (focus_score), out of
    # focus_pool per chosen episode, drawn from the fresh indices focus_start.. (past any uniform
    # store's, so no collected episode comes back); focus_steps: HyperFlow's Euler steps
    focus_prefix: NonNegInt = 0
    focus_pool: PosInt = 4
    focus_start: NonNegInt = 1_000_000
    focus_steps: PosInt = 20
    # what "adapts worst" means (hyperflow/focus.py): "gap", L(theta_HF) - L(bias-tuning's
    # endpoint), simulates bias-tuning per candidate (a trajectory's cost, without its writes);
    # "ratio", L(theta_HF) / L(theta_0), forward passes only, but it picks easy episodes where
    # there was little to gain (measured: docs/scaling.md)
    focus_score: Annotated[str, registry(lambda: registries.SCORES)] = "gap"

    @model_validator(mode="after")
    def _ranges_agree(self) -> CollectConfig:
        if self.lr_min > self.lr_max:
            raise BadKey("lr_min", f"must be <= collect.lr_max={self.lr_max}, got {self.lr_min}")
        if self.focus_start < self.focus_prefix:
            # the candidates would repeat the prefix's episodes
            raise BadKey(
                "focus_start",
                f"must be >= collect.focus_prefix={self.focus_prefix} (candidates would "
                f"repeat the prefix's episodes), got {self.focus_start}",
            )
        return self
