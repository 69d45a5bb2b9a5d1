"""drift.safetensors + drift.json: a trained drift network, rebuildable without the training code.

A frozen target encoder is *not* saved (it belongs to the target checkpoint and is passed back in
at load time); a separately trained timm encoder is saved with the drift weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from hyperflow.bias import BiasLayout
from hyperflow.drift.network import DriftConfig, DriftNet
from hyperflow.errors import UserError

FORMAT = "hyperflow-drift/1"
WEIGHTS, META = "drift.safetensors", "drift.json"


def _state(net: DriftNet) -> dict:
    state = net.state_dict()
    if net.frozen_encoder:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_drift(net: DriftNet, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write out_dir/drift.safetensors and out_dir/drift.json (config, layout and its hash,
    interpolant, horizon, feature_dim, `extra` under "extra"). Each file is written to a
    temporary name and renamed, so a crash never leaves a half-written checkpoint."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, **net.export_config(), "extra": extra or {}}
    text = json.dumps(meta, indent=2, sort_keys=True)  # fails early if extra is not JSON-able
    save_file(_state(net), str(out / (WEIGHTS + ".tmp")), metadata={"format": FORMAT})
    (out / (META + ".tmp")).write_text(text)
    os.replace(out / (WEIGHTS + ".tmp"), out / WEIGHTS)
    os.replace(out / (META + ".tmp"), out / META)
    return out


def read_drift_meta(path: str | Path) -> dict:
    """The parsed drift.json of a checkpoint directory (UserError if missing or foreign)."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise UserError(f"no drift checkpoint at {str(path)!r}: {meta_path} does not exist")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_drift(
    path: str | Path, encoder: nn.Module, feature_dim: int, expected_layout_hash: str | None = None
) -> DriftNet:
    """Rebuild a DriftNet saved by save_drift, with `encoder` ([N, C, H, W] -> [N, feature_dim]).

    Refuses (UserError naming both hashes) a checkpoint whose bias layout differs from
    `expected_layout_hash`, e.g. a drift trained for another backbone or bias selection.
    """
    meta = read_drift_meta(path)
    layout = BiasLayout.from_json(meta["layout"])
    if layout.hash() != meta["layout_hash"]:
        raise UserError(
            f"{Path(path) / META} is inconsistent: layout hashes to {layout.hash()}, "
            f"file says {meta['layout_hash']}"
        )
    if expected_layout_hash is not None and layout.hash() != expected_layout_hash:
        raise UserError(
            f"drift at {str(path)!r} was trained for bias layout {layout.hash()}, "
            f"but the target model has bias layout {expected_layout_hash}"
        )
    if int(meta["feature_dim"]) != feature_dim:
        raise UserError(
            f"drift at {str(path)!r} expects encoder features of size {meta['feature_dim']}, "
            f"got feature_dim={feature_dim}"
        )
    net = DriftNet(layout, DriftConfig(**meta["config"]), encoder, feature_dim, meta["horizon"])
    missing, unexpected = net.load_state_dict(load_file(str(Path(path) / WEIGHTS)), strict=False)
    if net.frozen_encoder:  # the target encoder's weights are deliberately not in the file
        missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        weights = Path(path) / WEIGHTS
        raise UserError(f"{weights} does not match drift.json: {missing=} {unexpected=}")
    return net
