"""What a drift network is: a size preset (small, base, large) whose dimensions explicit keys may
override, the encoder, the interpolant it is trained on and whether it reads site statistics
(per coordinate, and with task_stats summarised per layer into the task embedding).

A DriftNet stores its config *resolved* (every dimension filled in), so drift.json and a
checkpoint's run signature name the architecture itself, not a preset whose values might change.
A drift.json written before the dimensions were keys holds only `size`: its dimensions resolve to
that preset's, which is the architecture it was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from hyperflow.config import check_drift_keys


@dataclass(frozen=True)
class DriftSize:
    layer_dim: int  # d: per-layer token width; the in/out maps are n_l x d
    width: int  # w: trunk width
    depth: int  # FiLM residual blocks in the trunk
    task_dim: int  # D: task embedding size
    time_dim: int  # Fourier features of t / horizon (sin and cos: even)


DRIFT_SIZES: dict[str, DriftSize] = {
    "small": DriftSize(layer_dim=32, width=128, depth=2, task_dim=64, time_dim=32),
    "base": DriftSize(layer_dim=64, width=256, depth=3, task_dim=128, time_dim=64),
    "large": DriftSize(layer_dim=128, width=512, depth=4, task_dim=256, time_dim=128),
}
DIMS = tuple(f.name for f in fields(DriftSize))
_KEYS = ("size", "encoder", "interpolant", "site_stats", "task_stats")


@dataclass
class DriftConfig:
    size: str = "small"  # preset: key of DRIFT_SIZES
    encoder: str = "target"  # "target": frozen target backbone; else a timm name (trained)
    interpolant: str = "piecewise_cubic"  # key of INTERPOLANTS the drift is trained on
    site_stats: bool = True  # condition on per-bias activation statistics (needs encoder=target)
    # explicit dimensions; None takes the preset's value
    layer_dim: int | None = None
    width: int | None = None
    depth: int | None = None
    task_dim: int | None = None
    time_dim: int | None = None
    task_stats: bool = False  # the task embedding reads a per-layer summary of site statistics

    def validate(self) -> None:
        """UserError naming `train.<key>` unless the config schema admits these keys (the one
        implementation of the checks, for configs and drift.json alike)."""
        check_drift_keys({k: getattr(self, k) for k in (*_KEYS, *DIMS)})

    def dims(self) -> DriftSize:
        """The preset's dimensions, overridden by the explicit ones."""
        preset = asdict(DRIFT_SIZES[self.size])
        mine = {k: getattr(self, k) for k in DIMS if getattr(self, k) is not None}
        return DriftSize(**{**preset, **mine})

    def resolved(self) -> DriftConfig:
        """This config with every dimension explicit (what a DriftNet keeps and saves)."""
        self.validate()
        return replace(self, **asdict(self.dims()))


def drift_config(tc, interpolant: str) -> DriftConfig:
    """The DriftConfig of a `train` config section (hyperflow.config.DriftTrainConfig)."""
    dims = {name: getattr(tc, name) for name in DIMS}
    return DriftConfig(
        tc.size, tc.encoder, interpolant, tc.site_stats, **dims, task_stats=tc.task_stats
    )
