"""Checksums of committed shards, and store verification.

Every object of a shard has its size and sha256 in the shard's commit object (a WebDataset
shard is one object, so `sha256sum wds/shard-000012.tar` agrees with it). Verification
re-reads every object through the storage layer and hashes it; objects are hashed on a few
threads, since hashlib and the storage reads release the GIL.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from engine.manifest import Manifest, ShardInfo
from engine.storage import Location, location

_BLOCK = 4 << 20
_CHUNK = 64  # shards per process task
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


def _check_local(root: str, shards: list[ShardInfo]) -> list[list[str]]:
    loc = location(root)
    return [_check_shard(loc, s) for s in shards]


def verify_shards(loc: Location, shards: list[ShardInfo], threads: int = THREADS) -> dict:
    """{shard path: problems} for every shard in `shards` (re-hashing all their objects).

    Local stores are checked by `threads` processes, `_CHUNK` shards per task: a Zarr shard is a
    dozen small objects, and the Python work per object (open, read, compare) holds the GIL for
    about as long as hashing it takes, so threads left half the machine's sha256 rate unused.
    Remote stores wait on the network: threads, one shard per task."""
    # fork only a single-threaded process (a fork copies locks other threads may hold); spawn
    # would re-run a __main__ that may be a notebook or stdin
    if loc.local and len(shards) > _CHUNK and threading.active_count() == 1:
        chunks = [shards[i : i + _CHUNK] for i in range(0, len(shards), _CHUNK)]
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(threads, mp_context=ctx) as pool:
            results = pool.map(_check_local, [loc.root] * len(chunks), chunks)
            problems = [p for chunk in results for p in chunk]
    else:
        with ThreadPoolExecutor(threads) as pool:
            problems = list(pool.map(lambda s: _check_shard(loc, s), shards))
    return {s.path: p for s, p in zip(shards, problems)}


def verify(root) -> list[str]:
    """Re-hash every committed shard; one message per problem, each naming its shard."""
    m = Manifest.load(root)
    return [msg for msgs in verify_shards(m.loc, m.shards).values() for msg in msgs]
