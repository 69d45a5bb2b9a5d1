"""Config checks that need the runtime (devices, ranks): the one implementation the jobs call
once the runtime is known. Everything decidable from the config alone is in the schema."""

from __future__ import annotations

from hyperflow.config.load import validate
from hyperflow.config.train import DriftTrainConfig
from hyperflow.errors import UserError


def check_train_runtime(tc: DriftTrainConfig, world: int) -> None:
    """UserError naming the key unless the `train` settings can run with `world` ranks here:
    fp16 needs a GPU, FSDP needs 2+ ranks to shard over."""
    if tc.mixed_precision == "fp16":
        import torch  # here: the schema itself stays free of torch

        if not torch.cuda.is_available():
            raise UserError("config key 'train.mixed_precision' fp16 needs a GPU; on CPU use bf16")
    if tc.fsdp and world < 2:
        raise UserError(
            "config key 'train.fsdp' true shards over ranks: run with --nproc 2 or more, "
            f"got world size {world}"
        )


def check_drift_keys(values: dict) -> DriftTrainConfig:
    """The `train` keys of a drift architecture (size, encoder, interpolant, site_stats,
    dimensions; from a config or a drift.json) checked by the schema, naming `train.<key>`."""
    return validate(DriftTrainConfig, values, prefix="train.")
