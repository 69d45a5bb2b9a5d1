"""Typed run configuration: YAML files (named or by path) plus `--set key=value` overrides.

Every section is a strict pydantic model holding every range, registry and cross-key check, so
a job receives a config it can run; a bad one is one UserError naming the key (exit 2). Checks
that need the runtime (GPU present, ranks) are in `runtime`, called by the jobs. Importing this
package loads neither torch nor timm: registries in torch modules are read on first use.
"""

from hyperflow.config.collect import CollectConfig
from hyperflow.config.evaluate import EvaluateConfig
from hyperflow.config.load import CONFIG_DIR, Config, load_config, to_dict, validate
from hyperflow.config.runtime import check_drift_keys, check_train_runtime
from hyperflow.config.sections import (
    AdaptConfig,
    DataConfig,
    EpisodeConfig,
    PretrainConfig,
    TargetConfig,
)
from hyperflow.config.train import DriftTrainConfig, SmatTrainConfig

__all__ = [
    "CONFIG_DIR",
    "AdaptConfig",
    "CollectConfig",
    "Config",
    "DataConfig",
    "DriftTrainConfig",
    "EpisodeConfig",
    "EvaluateConfig",
    "PretrainConfig",
    "SmatTrainConfig",
    "TargetConfig",
    "check_drift_keys",
    "check_train_runtime",
    "load_config",
    "to_dict",
    "validate",
]
