"""Checksums of committed shards, and store verification.

Every object of a shard has its size and sha256 in the shard's commit object (a WebDataset
shard is one object, so `sha256sum wds/shard-000012.tar` agrees with it). Verification
re-reads every object through the storage layer and hashes it; objects are hashed on a few
threads, since hashlib and the storage reads release the GIL.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from engine.manifest import Manifest, ShardInfo
from engine.storage import Location

_BLOCK = 4 << 20
THREADS = max(2, os.cpu_count() or 1)


def sha256_object(loc: Location, key: str) -> tuple[int, str]:
    """(size, sha256 hex) of one object, streamed in blocks."""
    path = loc.local_path(key)
    h, size = hashlib.sha256(), 0
    # plain file reads locally: most objects are small, and fsspec's file objects cost ~50 us more
    with open(path, "rb", buffering=0) if path is not None else loc.open(key) as f:
        while block := f.read(_BLOCK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _check_object(loc: Location, who: str, key: str, want: list) -> list[str]:
    try:
        size, digest = sha256_object(loc, key)
    except FileNotFoundError:
        return [f"{who}: object {key} missing"]
    problems = []
    if size != want[0]:
        problems.append(f"{who}: object {key} has {size} bytes, its commit says {want[0]}")
    elif digest != want[1]:
        problems.append(f"{who}: object {key} sha256 {digest[:12]}.. != commit {want[1][:12]}..")
    return problems


def _check_shard(loc: Location, s: ShardInfo) -> list[str]:
    who = f"shard {s.name} ({s.format}, {s.path})"
    return [m for k, v in s.objects.items() for m in _check_object(loc, who, k, v)]


def verify_shards(loc: Location, shards: list[ShardInfo], threads: int = THREADS) -> dict:
    """{shard path: problems} for every shard in `shards` (re-hashing all their objects).

    One pool task per shard, not per object: a Zarr shard is a dozen small objects, and a task
    per object cost as much as hashing them."""
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda s: _check_shard(loc, s), shards, chunksize=1)
        return {s.path: problems for s, problems in zip(shards, results)}


def verify(root) -> list[str]:
    """Re-hash every committed shard; one message per problem, each naming its shard."""
    m = Manifest.load(root)
    return [msg for msgs in verify_shards(m.loc, m.shards).values() for msg in msgs]
