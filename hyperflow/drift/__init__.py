"""Conditional drift network h(theta, t | support set), its objective and its checkpoints."""

from hyperflow.drift.io import load_drift, read_drift_meta, save_drift
from hyperflow.drift.network import DriftNet
from hyperflow.drift.objective import drift_loss, fit_normalizer_from_knots
from hyperflow.drift.sizes import DRIFT_SIZES, DriftConfig, DriftSize, drift_config
from hyperflow.drift.task import Task, timm_encoder

__all__ = [
    "DRIFT_SIZES",
    "DriftConfig",
    "DriftNet",
    "DriftSize",
    "drift_config",
    "drift_loss",
    "fit_normalizer_from_knots",
    "load_drift",
    "read_drift_meta",
    "save_drift",
    "Task",
    "timm_encoder",
]
