"""Argument helpers shared by the job entrypoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from hyperflow.errors import UserError


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--config",
        required=required,
        default=None if required else "quickstart",
        help="a named config (e.g. quickstart, from hyperflow/configs) or a path to a YAML file",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set pretrain.epochs=5 (repeatable)",
    )


def check_out_dir(out: Path, create: bool = True) -> Path:
    """Refuse an --out path that is an existing file; create the directory if asked."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a directory")
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1, with a message naming the bad value."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value!r}")
    return n
