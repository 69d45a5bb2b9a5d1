"""smat.safetensors + smat.json: a trained SMAT, rebuildable for the target it was trained for.

Only SMAT's own tensors are saved (dense delta, gates, router, the sparsity multiplier); the
frozen target belongs to the target checkpoint. smat.json records the bias layout hash, so an
evaluation refuses a SMAT trained for another target's biases instead of merging garbage.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from engine.storage import Location, location
from hyperflow.errors import UserError
from hyperflow.model import TargetModel
from hyperflow.smat.model import Smat, SmatConfig
from hyperflow.weights_io import read_meta, read_weights, write_artifact

FORMAT = "hyperflow-smat/1"
WEIGHTS, META = "smat.safetensors", "smat.json"


def save_smat(
    smat: Smat, model: TargetModel, out: str | os.PathLike, extra: dict | None = None
) -> Location:
    """Write smat.safetensors, then smat.json (config, sizes, the target's layout hash, `extra`
    under "extra") under `out`, a local directory or a URL; smat.json goes last, so a crash
    never leaves a SMAT that looks complete but is not."""
    meta = {
        "format": FORMAT,
        "config": asdict(smat.cfg),
        "size": smat.size,
        "feature_dim": model.feature_dim,
        "layout_hash": model.layout.hash(),
        "extra": extra or {},
    }
    return write_artifact(out, (WEIGHTS, META), smat.state_dict(), meta)


def read_smat_meta(path: str | os.PathLike) -> dict:
    """The parsed smat.json under `path` (UserError if missing or foreign)."""
    missing = f"--smat {os.fspath(path)!r} holds no {META} (run `hyperflow train --method smat`)"
    return read_meta(path, META, FORMAT, missing)


def load_smat(path: str | os.PathLike, model: TargetModel) -> Smat:
    """The SMAT saved under `path`, in eval mode, checked against `model`: UserError naming both
    hashes if it was trained for another bias layout."""
    meta = read_smat_meta(path)
    loc, where = location(path), os.fspath(path)
    if meta["layout_hash"] != model.layout.hash():
        raise UserError(
            f"SMAT at {where!r} was trained for bias layout {meta['layout_hash']}, but the "
            f"target has bias layout {model.layout.hash()}"
        )
    if int(meta["feature_dim"]) != model.feature_dim or int(meta["size"]) != model.layout.size:
        raise UserError(f"SMAT at {where!r} does not fit the target's features or biases")
    smat = Smat(SmatConfig(**meta["config"]), int(meta["size"]), int(meta["feature_dim"]))
    state = read_weights(path, (WEIGHTS, META))
    try:
        smat.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{loc.child(WEIGHTS).url} does not match {META}: {e}") from None
    return smat.eval()
