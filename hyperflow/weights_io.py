"""Weights + JSON metadata, the way every trained artifact here is stored (drift, SMAT).

NAME.safetensors is written first and NAME.json last, each whole (engine.storage), so a crash
never leaves an artifact that looks complete but is not; readers open the JSON first and check
its "format" before trusting anything else in it.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load, save

from engine.storage import Location, location
from hyperflow.errors import UserError


def write_artifact(
    out: str | os.PathLike, names: tuple[str, str], state: dict, meta: dict
) -> Location:
    """Write `state` (name -> tensor) to names[0], then `meta` (with its "format") to names[1],
    under `out`, a local directory or a URL."""
    loc = location(out)
    text = json.dumps(meta, indent=2, sort_keys=True)  # fails early if meta is not JSON-able
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    loc.write_bytes(names[0], save(tensors, metadata={"format": meta["format"]}))
    loc.write_bytes(names[1], text.encode())
    return loc


def read_meta(path: str | os.PathLike, name: str, fmt: str, missing: str) -> dict:
    """The parsed JSON `name` under `path`; UserError `missing` if absent, or naming the format
    if it is not `fmt`."""
    loc = location(path)
    try:
        meta = json.loads(loc.read_bytes(name))
    except FileNotFoundError:
        raise UserError(missing) from None
    if meta.get("format") != fmt:
        raise UserError(f"{loc.child(name).url} has format {meta.get('format')!r}, not {fmt!r}")
    return meta


def read_weights(path: str | os.PathLike, names: tuple[str, str]) -> dict[str, torch.Tensor]:
    """The tensors of names[0] under `path`; UserError if only the JSON names[1] is there."""
    loc = location(path)
    try:
        return load(loc.read_bytes(names[0]))
    except FileNotFoundError:
        raise UserError(
            f"{loc.child(names[0]).url} does not exist ({names[1]} without weights)"
        ) from None
