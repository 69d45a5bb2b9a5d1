"""Dataset specs -> loaders: `glyphs` (embedded default), `glyphs-wide` and `folder:PATH`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hyperflow.data.dataset import Dataset
from hyperflow.data.folder import load_folder
from hyperflow.data.glyphs import load_glyphs
from hyperflow.errors import UserError


def _glyphs(arg: str | None, image_size: int, channels: int, cache_dir) -> Dataset:
    if arg is not None:
        raise UserError(f"dataset spec 'glyphs' takes no argument, got 'glyphs:{arg}'")
    return load_glyphs(image_size, channels, cache_dir)


def _glyphs_wide(arg: str | None, image_size: int, channels: int, cache_dir) -> Dataset:
    if arg is not None:
        raise UserError(f"dataset spec 'glyphs-wide' takes no argument, got 'glyphs-wide:{arg}'")
    return load_glyphs(image_size, channels, cache_dir, spec="glyphs-wide", wide=True)


def _folder(arg: str | None, image_size: int, channels: int, cache_dir) -> Dataset:
    if not arg:
        raise UserError("dataset spec 'folder' needs a path: folder:PATH")
    return load_folder(arg, image_size, channels)


# name -> loader(arg after the first ":" or None, image_size, channels, cache_dir)
DATASETS: dict[str, Callable[..., Dataset]] = {
    "glyphs": _glyphs,
    "glyphs-wide": _glyphs_wide,  # 15 more base domains, the same held-out ones (glyphs.py)
    "folder": _folder,
}
_USAGE = {"glyphs": "glyphs", "glyphs-wide": "glyphs-wide", "folder": "folder:PATH"}


def load_dataset(
    spec: str, image_size: int = 32, channels: int = 1, cache_dir: str | Path | None = None
) -> Dataset:
    """Load a dataset from its spec string, e.g. "glyphs" or "folder:/data/pets"."""
    if image_size < 4:
        raise UserError(f"image_size must be >= 4, got {image_size}")
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    name, sep, arg = spec.partition(":")
    if name not in DATASETS:
        valid = ", ".join(_USAGE[n] for n in DATASETS)
        raise UserError(f"unknown dataset spec {spec!r}; valid: {valid}")
    return DATASETS[name](arg if sep else None, image_size, channels, cache_dir)
