"""Trajectory stores: the format registry and the shard life cycle.

STORE/
  manifest.json          committed shards (engine.manifest); written only by the driver
  traj.zarr/<shard>/     "zarr" format (engine.stores.zarr_store)
  wds/<shard>.tar        "wds" format (engine.stores.wds_store)
  .tmp/                  shards being written; never read, wiped by remove_uncommitted

Life cycle: the driver calls `open_store` (creates or re-opens the manifest, refusing a
different config, and prepares each format's root), then `remove_uncommitted`. Each writer
calls `write_shard` for names it owns: the shard is written whole under .tmp/, fsynced,
hashed and renamed into place, and the returned ShardInfo goes back to the driver, which
calls `Manifest.commit`. Readers see only shards listed in the manifest.
"""

import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine.checksum import sha256_path, size_path, tree_files
from engine.manifest import MANIFEST, Manifest, ShardInfo
from engine.record import THETA_DTYPES, TrajectoryRecord, validate_record
from engine.stores.encoding import DEFAULT_ENCODING, THETA_ENCODINGS
from engine.stores.wds_store import WdsStore
from engine.stores.zarr_store import ZarrStore
from hyperflow.errors import UserError

STORES = {"zarr": ZarrStore, "wds": WdsStore}
TMP = ".tmp"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(index: int) -> str:
    """Canonical shard name for a writer's shard index: 12 -> "shard-000012"."""
    return f"shard-{index:06d}"


def _store(fmt: str):
    if fmt not in STORES:
        raise UserError(f"unknown store format {fmt!r}; choose from {sorted(STORES)}")
    return STORES[fmt]


def open_store(
    root: Path, config: dict, formats: list[str], implied: dict | None = None
) -> Manifest:
    """Driver only: create or re-open STORE (see Manifest.create_or_open) and its format roots."""
    for f in formats:
        _store(f)
    m = Manifest.create_or_open(root, config, formats, implied)
    for f in formats:
        STORES[f].prepare(m.root)
    return m


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(
    root: Path,
    fmt: str,
    name: str,
    records: list[TrajectoryRecord],
    theta_dtype: str | None = "float16",
    theta_encoding: str = DEFAULT_ENCODING,
) -> ShardInfo:
    """Write `records` as shard `name` of format `fmt`, atomically; return its ShardInfo.

    theta is cast to `theta_dtype` (None keeps each record's dtype) and stored losslessly
    with `theta_encoding` (engine.stores.encoding). Does not touch the manifest.
    """
    store, root = _store(fmt), Path(root)
    assert _NAME.match(name), f"shard name {name!r} must match {_NAME.pattern}"
    assert records, f"shard {name}: no records"
    assert theta_dtype in (None, *THETA_DTYPES), (
        f"theta_dtype {theta_dtype!r} not in {THETA_DTYPES}"
    )
    assert theta_encoding in THETA_ENCODINGS, f"unknown theta_encoding {theta_encoding!r}"
    recs = []
    for r in records:
        validate_record(r)
        if theta_dtype is not None and r.theta.dtype != theta_dtype:
            with np.errstate(over="ignore"):  # overflow is reported just below
                r = replace(r, theta=r.theta.astype(theta_dtype))
            assert np.isfinite(r.theta).all(), f"record {r.id}: theta overflows {theta_dtype}"
        recs.append(r)
    ids = [r.id for r in recs]
    assert len(set(ids)) == len(ids), f"shard {name}: record ids repeat"
    r0 = recs[0]
    for r in recs:  # one theta layout and image size per shard (arrays are stacked)
        assert r.theta.shape == r0.theta.shape and r.theta.dtype == r0.theta.dtype, (
            f"shard {name}: record {r.id} theta {r.theta.dtype}{r.theta.shape} "
            f"!= {r0.theta.dtype}{r0.theta.shape}"
        )
        assert r.support.shape[1:] == r0.support.shape[1:], (
            f"shard {name}: record {r.id} image {r.support.shape[1:]} != {r0.support.shape[1:]}"
        )
    final = store.shard_path(root, name)
    assert final.parent.is_dir(), f"{final.parent} missing: call open_store({root}) first"
    if final.exists():
        raise FileExistsError(f"shard {final} already exists (one writer per shard name)")
    (root / TMP).mkdir(exist_ok=True)
    tmp = root / TMP / f"{fmt}-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        store.write(tmp, recs, theta_encoding)
        for p in tree_files(tmp):  # data durable before the rename makes it visible
            _fsync(p)
        info = ShardInfo(
            name=name,
            format=fmt,
            path=final.relative_to(root).as_posix(),
            records=len(recs),
            bytes=size_path(tmp),
            sha256=sha256_path(tmp),
            ids=ids,
            domains=dict(Counter(str(r.episode.get("domain", "unknown")) for r in recs)),
        )
        os.rename(tmp, final)
        _fsync(final.parent)
    except BaseException:
        _remove(tmp)
        raise
    return info


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def open_shard(root: Path, fmt: str, name: str):
    """Random-access reader of one shard: len(reader), reader.read(i), reader.close()."""
    path = _store(fmt).shard_path(root, name)
    if not path.exists():
        raise UserError(f"shard {name} ({fmt}) not found at {path}")
    return STORES[fmt].open(path)


def read_shard(root: Path, fmt: str, name: str) -> Iterator[TrajectoryRecord]:
    """Records of one shard, in shard order."""
    reader = open_shard(root, fmt, name)
    try:
        for i in range(len(reader)):
            yield reader.read(i)
    finally:
        reader.close()


def read_records(root: Path, fmt: str | None = None) -> Iterator[TrajectoryRecord]:
    """All committed records in manifest order, from `fmt` (default: the first format)."""
    m = Manifest.load(root)
    fmt = fmt or m.formats[0]
    if fmt not in m.formats:
        raise UserError(f"store {root} has formats {m.formats}, not {fmt!r}")
    for s in m.shards_of(fmt):
        yield from read_shard(root, fmt, s.name)


def remove_uncommitted(root: Path) -> list[str]:
    """Driver only, with no writer running: delete temp leftovers and unlisted shards.

    Returns the removed paths relative to root, sorted.
    """
    m, root = Manifest.load(root), Path(root)
    keep = {s.path for s in m.shards}
    doomed = sorted((root / TMP).glob("*")) if (root / TMP).is_dir() else []
    doomed += sorted(root.glob(f".{MANIFEST}.tmp-*"))  # a driver killed mid-rewrite
    for fmt in m.formats:
        parent = root / STORES[fmt].subdir
        for p in sorted(parent.iterdir()) if parent.is_dir() else []:
            if p.name != "zarr.json" and p.relative_to(root).as_posix() not in keep:
                doomed.append(p)
    for p in doomed:
        _remove(p)
    return sorted(p.relative_to(root).as_posix() for p in doomed)
