"""The name registries config values are checked against, read from the modules that own them.

Torch-free registries are imported here; those living in torch-importing modules are imported on
first use, inside the function, so `import hyperflow.config` never loads torch or timm.
"""

from __future__ import annotations

from engine.record import THETA_DTYPES
from engine.stores import STORES
from engine.stores.encoding import THETA_ENCODINGS
from hyperflow.focus import SCORES
from hyperflow.heldout import HELD_OUT_SHIFTS

__all__ = ["HELD_OUT_SHIFTS", "SCORES", "STORES", "THETA_DTYPES", "THETA_ENCODINGS"]

BOTH = "both"  # collect.format: every store format at once
PRECISIONS = ("no", "bf16", "fp16")  # Accelerate's mixed_precision values the trainer supports


def collect_formats() -> list[str]:
    return [*STORES, BOTH]


def shifts() -> list[str]:
    from hyperflow.data.shifts import SHIFTS

    return list(SHIFTS)


def collection_shifts() -> list[str]:
    from hyperflow.data.shifts import COLLECTION_SHIFTS

    return list(COLLECTION_SHIFTS)


def interpolants() -> list[str]:
    from hyperflow.interpolants import INTERPOLANTS

    return list(INTERPOLANTS)


def solvers() -> list[str]:
    from hyperflow.solvers import SOLVERS

    return list(SOLVERS)


def drift_sizes() -> list[str]:
    from hyperflow.drift.sizes import DRIFT_SIZES

    return list(DRIFT_SIZES)


def datasets() -> list[str]:
    from hyperflow.data.registry import DATASETS

    return list(DATASETS)


def tuned_methods() -> list[str]:
    """Methods with a learning rate (adapt.lr keys): the gradient ones and SMAT's."""
    from hyperflow.adapt.methods import GRADIENT_METHODS
    from hyperflow.smat.adapt import SMAT_METHODS

    return [*GRADIENT_METHODS, *SMAT_METHODS]


def evaluate_methods() -> list[str]:
    """Every name evaluate.methods admits: gradient, HyperFlow (and its `_ls` twins), SMAT."""
    from hyperflow.evaluation.plan import HYPERFLOW_METHODS, LINE_SEARCH

    hyperflow = [m + ls for m in HYPERFLOW_METHODS for ls in ("", LINE_SEARCH)]
    return [*tuned_methods(), *hyperflow]
