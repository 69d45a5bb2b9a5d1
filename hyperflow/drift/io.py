"""drift.safetensors + drift.json: a trained drift network, rebuildable without the training code.

A frozen target encoder is *not* saved (it belongs to the target checkpoint and is passed back in
at load time); a separately trained timm encoder is saved with the drift weights.
"""

from __future__ import annotations

import os

from torch import nn

from engine.storage import Location, location
from hyperflow.bias import BiasLayout
from hyperflow.drift.network import DriftConfig, DriftNet
from hyperflow.errors import UserError
from hyperflow.weights_io import read_meta, read_weights, write_artifact

FORMAT = "hyperflow-drift/1"
WEIGHTS, META = "drift.safetensors", "drift.json"


def _state(net: DriftNet, state: dict | None) -> dict:
    state = net.state_dict() if state is None else state
    if net.frozen_encoder:  # (not in net.state_dict(); a state from elsewhere may hold it)
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return state


def save_drift(
    net: DriftNet, out: str | os.PathLike, extra: dict | None = None, state: dict | None = None
) -> Location:
    """Write drift.safetensors, then drift.json (config with every dimension, layout and its
    hash, interpolant, horizon, feature_dim, parameter count, `extra` under "extra") under `out`,
    a local directory or a URL. Each object is written whole (engine.storage) and drift.json,
    which load_drift reads first, goes last, so a crash never leaves a checkpoint that looks
    complete but is not. `state`: the weights to write instead of net.state_dict(), e.g. the
    full state a trainer gathered from sharded ranks (accelerator.get_state_dict)."""
    meta = {"format": FORMAT, **net.export_config(), "extra": extra or {}}
    return write_artifact(out, (WEIGHTS, META), _state(net, state), meta)


def read_drift_meta(path: str | os.PathLike) -> dict:
    """The parsed drift.json of a checkpoint (UserError if missing or foreign)."""
    where = location(path).child(META).url
    missing = f"no drift checkpoint at {os.fspath(path)!r}: {where} does not exist"
    return read_meta(path, META, FORMAT, missing)


def load_drift(
    path: str | os.PathLike,
    encoder: nn.Module,
    feature_dim: int,
    expected_layout_hash: str | None = None,
) -> DriftNet:
    """Rebuild a DriftNet saved by save_drift, with `encoder` ([N, C, H, W] -> [N, feature_dim]).

    Refuses (UserError naming both hashes) a checkpoint whose bias layout differs from
    `expected_layout_hash`, e.g. a drift trained for another backbone or bias selection.
    """
    meta = read_drift_meta(path)
    loc, where = location(path), os.fspath(path)
    layout = BiasLayout.from_json(meta["layout"])
    if layout.hash() != meta["layout_hash"]:
        raise UserError(
            f"{loc.child(META).url} is inconsistent: layout hashes to {layout.hash()}, "
            f"file says {meta['layout_hash']}"
        )
    if expected_layout_hash is not None and layout.hash() != expected_layout_hash:
        raise UserError(
            f"drift at {where!r} was trained for bias layout {layout.hash()}, "
            f"but the target model has bias layout {expected_layout_hash}"
        )
    if int(meta["feature_dim"]) != feature_dim:
        raise UserError(
            f"drift at {where!r} expects encoder features of size {meta['feature_dim']}, "
            f"got feature_dim={feature_dim}"
        )
    net = DriftNet(layout, DriftConfig(**meta["config"]), encoder, feature_dim, meta["horizon"])
    state = read_weights(path, (WEIGHTS, META))
    # (a frozen target encoder is held, not owned, by the net: its weights are in neither)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{loc.child(WEIGHTS).url} does not match drift.json: {missing=} {unexpected=}"
        )
    return net
