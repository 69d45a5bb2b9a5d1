"""Job-level fixtures: real `hyperflow` commands at the `tiny` config's scale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def hyperflow(*argv: str, check: bool = True, timeout: float = 600, env: dict | None = None):
    """Run `python -m jobs.cli ARGV` in a subprocess; returns CompletedProcess (text)."""
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"hyperflow {' '.join(argv)} exited {proc.returncode}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory) -> Path:
    """A target pretrained for a few seconds with the tiny config (shared by the job tests)."""
    out = tmp_path_factory.mktemp("tiny") / "target"
    hyperflow("pretrain", "--config", "tiny", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def cli():
    """The `hyperflow` subprocess runner (a fixture: test files must not import conftest)."""
    return hyperflow
