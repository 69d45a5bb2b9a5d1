"""Trajectory stores: the format registry and the shard life cycle, on any storage.

STORE/                                 a local directory or a URL prefix (engine.storage)
  manifest.json                        compaction of the commits (engine.manifest)
  commits/<format>/<shard>.json        one commit object per shard and format, written last
  traj.zarr/zarr.json                  "zarr" format root group (engine.stores.zarr_store)
  traj.zarr/<shard>/                   one Zarr v3 group per shard
  wds/<shard>.tar                      "wds" format (engine.stores.wds_store)

Life cycle: the driver calls `open_store` (creates or re-opens the manifest, refusing a
different config, and prepares each format's root), then `remove_uncommitted`. Each writer
calls `write_shard` for names it owns: the shard is encoded whole in memory, hashed, and put
object by object under its final keys, which nothing references until the driver commits the
returned ShardInfo (`Manifest.commit`). Readers see only committed shards. Without this
package: read `manifest.json` and `commits/*/*.json` for the shard list, then plain `zarr`,
`tar` + `numpy` or `webdataset` for the shards.
"""

import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from engine.errors import UserError
from engine.manifest import COMMITS, MANIFEST, Manifest, ShardInfo
from engine.record import THETA_DTYPES, TrajectoryRecord, validate_record
from engine.storage import Location, location
from engine.stores.encoding import DEFAULT_ENCODING, THETA_ENCODINGS
from engine.stores.wds_store import WdsStore
from engine.stores.zarr_store import ZarrStore

STORES = {"zarr": ZarrStore, "wds": WdsStore}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(index: int) -> str:
    """Canonical shard name for a writer's shard index: 12 -> "shard-000012"."""
    return f"shard-{index:06d}"


def _store(fmt: str):
    if fmt not in STORES:
        raise UserError(f"unknown store format {fmt!r}; choose from {sorted(STORES)}")
    return STORES[fmt]


def _loc(root) -> Location:
    return root if isinstance(root, Location) else location(root)


def open_store(
    root, config: dict, formats: list[str], implied: dict | None = None, grows: str | None = None
) -> Manifest:
    """Driver only: create or re-open STORE (see Manifest.create_or_open) and its format roots."""
    for f in formats:
        _store(f)
    m = Manifest.create_or_open(_loc(root), config, formats, implied, grows)
    for f in formats:
        STORES[f].prepare(m.loc)
    return m


def write_shard(
    root,
    fmt: str,
    name: str,
    records: list[TrajectoryRecord],
    theta_dtype: str | None = "float16",
    theta_encoding: str = DEFAULT_ENCODING,
) -> ShardInfo:
    """Write `records` as shard `name` of format `fmt`; return its ShardInfo (to commit).

    theta is cast to `theta_dtype` (None keeps each record's dtype) and stored losslessly
    with `theta_encoding` (engine.stores.encoding). Every object is written whole (atomic per
    object); the shard is invisible to readers until the driver commits the ShardInfo.
    """
    store, loc = _store(fmt), _loc(root)
    # records, names and settings come from the caller's simulator and config: ValueError
    if not _NAME.match(name):
        raise ValueError(f"shard name {name!r} must match {_NAME.pattern}")
    if not records:
        raise ValueError(f"shard {name}: no records")
    if theta_dtype not in (None, *THETA_DTYPES):
        raise ValueError(f"theta_dtype {theta_dtype!r} not in {THETA_DTYPES}")
    if theta_encoding not in THETA_ENCODINGS:
        raise ValueError(f"unknown theta_encoding {theta_encoding!r}")
    recs = []
    for r in records:
        validate_record(r)
        if theta_dtype is not None and r.theta.dtype != theta_dtype:
            with np.errstate(over="ignore"):  # overflow is reported just below
                r = replace(r, theta=r.theta.astype(theta_dtype))
            if not np.isfinite(r.theta).all():
                raise ValueError(f"record {r.id}: theta overflows {theta_dtype}")
        recs.append(r)
    ids = [r.id for r in recs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"shard {name}: record ids repeat")
    r0 = recs[0]
    for r in recs:  # one theta layout and image size per shard (arrays are stacked)
        if r.theta.shape != r0.theta.shape or r.theta.dtype != r0.theta.dtype:
            raise ValueError(
                f"shard {name}: record {r.id} theta {r.theta.dtype}{r.theta.shape} "
                f"!= {r0.theta.dtype}{r0.theta.shape}"
            )
        if r.support.shape[1:] != r0.support.shape[1:]:
            raise ValueError(
                f"shard {name}: record {r.id} image {r.support.shape[1:]} != {r0.support.shape[1:]}"
            )
    if not loc.exists(MANIFEST):
        raise ValueError(f"no store at {loc.url}: call open_store({loc.url!r}) first")
    key = store.shard_key(name)
    objects = store.encode(key, recs, theta_encoding)  # store-relative key -> bytes
    for k, data in objects.items():
        loc.write_bytes(k, data)
    return ShardInfo(
        name=name,
        format=fmt,
        path=key,
        records=len(recs),
        bytes=sum(len(d) for d in objects.values()),
        objects={k: [len(d), hashlib.sha256(d).hexdigest()] for k, d in sorted(objects.items())},
        first_id=min(ids),
        last_id=max(ids),
        domains=dict(Counter(str(r.episode.get("domain", "unknown")) for r in recs)),
        ids=ids,
    )


def open_shard(root, fmt: str, name: str):
    """Random-access reader of one shard: len(reader), reader.read(i), reader.close()."""
    loc, key = _loc(root), _store(fmt).shard_key(name)
    if not loc.exists(key):
        raise UserError(f"shard {name} ({fmt}) not found at {loc.child(key).url}")
    return STORES[fmt].open(loc, key)


def read_shard(root, fmt: str, name: str) -> Iterator[TrajectoryRecord]:
    """Records of one shard, in shard order."""
    reader = open_shard(root, fmt, name)
    try:
        for i in range(len(reader)):
            yield reader.read(i)
    finally:
        reader.close()


def read_records(root, fmt: str | None = None) -> Iterator[TrajectoryRecord]:
    """All committed records in manifest order, from `fmt` (default: the first format)."""
    m = Manifest.load(_loc(root))
    fmt = fmt or m.formats[0]
    if fmt not in m.formats:
        raise UserError(f"store {m.root} has formats {m.formats}, not {fmt!r}")
    for s in m.shards_of(fmt):
        yield from read_shard(m.loc, fmt, s.name)


def remove_uncommitted(root) -> list[str]:
    """Driver only, with no writer running: delete the objects of shards that have no commit
    object, and temp files a killed process left. Lists the top level of each format's root
    (one entry per shard), not every object. Returns the removed keys, sorted."""
    m = Manifest.load(_loc(root))
    loc, doomed = m.loc, []
    for fmt in m.formats:
        store = STORES[fmt]
        keep = {s.path for s in m.shards_of(fmt)} | {f"{store.subdir}/{n}" for n in store.keep}
        doomed += [k for n in loc.list(store.subdir) if (k := f"{store.subdir}/{n}") not in keep]
        doomed += [f"{COMMITS}/{fmt}/{n}" for n in loc.list(f"{COMMITS}/{fmt}") if n[0] == "."]
    doomed += [n for n in loc.list() if n.startswith(f".{MANIFEST}.tmp-")]
    for k in doomed:
        loc.remove(k)
    return sorted(doomed)
