"""On-disk cache of built datasets: one .npz per build, keyed by a hash of the build inputs.

Files are written under a temporary name in the same directory and renamed into place, so a
reader never sees a half-written file and two concurrent builders simply race to an identical
result. Nothing is pickled: arrays only, metadata as a JSON string array.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


def cache_root(cache_dir: str | Path | None) -> Path:
    """cache_dir if given, else $HYPERFLOW_CACHE, else ~/.cache/hyperflow."""
    if cache_dir is None:
        cache_dir = os.environ.get("HYPERFLOW_CACHE") or Path.home() / ".cache" / "hyperflow"
    return Path(cache_dir).expanduser()


def cache_key(inputs: dict) -> str:
    """Short stable digest of JSON-serialisable build inputs."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def save_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays plus a JSON `meta` dict to path (.npz, compressed) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, __meta__=np.array(json.dumps(meta)), **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared between users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """(arrays, meta) from a file written by save_arrays; None if missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("__meta__")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # truncated or foreign file: the caller rebuilds and overwrites it
    return arrays, meta
