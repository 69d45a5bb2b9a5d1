"""Argument helpers shared by the job entrypoints."""

from __future__ import annotations

import argparse
import subprocess
import sys

from engine.errors import UserError
from engine.storage import Location, check_access, location


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


def output(url: str, what: str = "--out", create: bool = True) -> Location:
    """The Location of an output flag (a local path or a URL), checked before any work starts:
    UserError (exit 2) naming `what` and the URL unless it can be written (engine.storage:
    a probe object on object storage; locally an existing file in its place, or a directory
    that cannot be written, is refused). A local directory is then created, unless not
    `create`: the job creates it once it has results."""
    loc = location(url)
    check_access(loc, write=True, what=what)
    if create:
        loc.makedirs()
    return loc


def source(url: str, what: str) -> Location:
    """The Location of an input flag, UserError naming `what` and the URL unless it exists and
    can be read (a wrong bucket or missing credentials fail here, not deep inside the job)."""
    loc = location(url)
    check_access(loc, write=False, what=what)
    return loc


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1, with a message naming the bad value."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value!r}")
    return n


def set_flags(sets: list[str]) -> list[str]:
    """["k=v", ...] -> ["--set", "k=v", ...]."""
    return [x for kv in sets for x in ("--set", kv)]


def run_hyperflow(argv: list[str], tag: str) -> None:
    """Run `hyperflow ARGV` as a subprocess, printing the command under `tag`; its output goes
    to stderr (the caller's stdout is its JSON result). UserError if it fails."""
    print(f"[{tag}] hyperflow {' '.join(argv)}", file=sys.stderr, flush=True)
    code = subprocess.call([sys.executable, "-m", "jobs.cli", *argv], stdout=sys.stderr)
    if code != 0:
        raise UserError(f"`hyperflow {argv[0]}` failed (exit {code}); the {tag} stops here")
