"""Small stores for the engine tests (P and T kept small so every file runs in seconds).

Helpers are handed out as factory fixtures: importing `conftest` by name would clash with
other test folders' conftest modules.
"""

from pathlib import Path

import pytest

from engine.stores import STORES, open_store, shard_name, write_shard
from engine.synthetic import synthetic_records

CONFIG = {"target": "conv4-test", "layout_hash": "abc123", "T": 6, "sigma": {"init": 0.0}}


def _records(n: int, seed: int = 0, run: str = "t") -> list:
    # Varying support size N so that offsets matter; T=6, P=96, 8x8 grey images.
    domains = ("latin", "greek", "braille")
    return synthetic_records(
        n, T=6, P=96, n_support=(3, 9), image=(1, 8, 8), seed=seed, run=run, domains=domains
    )


def _store(root: Path, sizes: list[int], formats=tuple(STORES), seed: int = 0):
    # One committed shard per entry of `sizes`, in every format; returns (manifest, records).
    m = open_store(root, CONFIG, list(formats))
    recs = _records(sum(sizes), seed=seed)
    start = 0
    for k, n in enumerate(sizes):
        for fmt in formats:
            m.commit(write_shard(root, fmt, shard_name(k), recs[start : start + n]))
        start += n
    return m, recs


@pytest.fixture
def config():
    return dict(CONFIG)


@pytest.fixture
def make_records():
    """make_records(n, seed=0, run="t") -> list of small TrajectoryRecords."""
    return _records


@pytest.fixture
def make_store():
    """make_store(root, sizes, formats=all, seed=0) -> (Manifest, records) with committed shards."""
    return _store
