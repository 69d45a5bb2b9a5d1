"""The commit protocol: which shards of a store exist, and the config they belong to.

A shard exists for readers only once its *commit object* exists:

    STORE/commits/<format>/<shard>.json    one per committed shard, written last (ShardInfo with
                                           its record ids, and size + sha256 of every object)
    STORE/manifest.json                    the compaction: config, formats and every compacted
                                           shard's ShardInfo without ids

Object stores have atomic PUT and no rename, so nothing here renames: a writer puts a shard's
objects under keys nothing references yet, then the driver puts the commit object. A commit
therefore costs one small PUT whatever the store's size; manifest.json is rewritten only now and
then (when the commits since the last compaction reach a quarter of those compacted, so the
bytes rewritten per commit stay bounded) and at the end. Opening a store reads manifest.json and
lists the commit objects, reading those newer than the compaction; it never loads every record
id. Only the driver writes commits and the manifest.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from engine.errors import UserError
from engine.record import SCHEMA_VERSION
from engine.storage import Location, location

MANIFEST = "manifest.json"
COMMITS = "commits"
_COMPACT_MIN = 64  # uncompacted commits before the first compaction
_COMPACT_RATIO = 0.25  # later: when uncompacted >= this share of the compacted ones


@dataclass
class ShardInfo:
    """One committed shard of one format: what its writer wrote, as its commit object says."""

    name: str  # "shard-000012"; the same name in every format
    format: str  # key of engine.stores.STORES
    path: str  # key of the shard relative to the store root, e.g. "wds/shard-000012.tar"
    records: int
    bytes: int  # total size of the shard's objects
    objects: dict[str, list] = field(default_factory=dict)  # key -> [size, sha256 hex]
    first_id: str = ""  # smallest and largest record id (ids of shards never overlap)
    last_id: str = ""
    domains: dict[str, int] = field(default_factory=dict)  # records per episode domain
    ids: list[str] | None = None  # [records] in shard order; only in the commit object

    def summary(self) -> ShardInfo:
        """Without the id list: what manifest.json and readers keep."""
        return replace(self, ids=None)


def commit_key(fmt: str, name: str) -> str:
    return f"{COMMITS}/{fmt}/{name}.json"


def config_hash(config: dict) -> str:
    """Short sha256 of the canonical JSON of a config."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def first_difference(old, new, prefix: str = "") -> str | None:
    """Dotted path of the first (sorted) key whose values differ, recursing into dicts; None if
    they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if k not in old or k not in new:
                return f"{prefix}{k}"
            d = first_difference(old[k], new[k], f"{prefix}{k}.")
            if d is not None:
                return d
        return None
    return None if old == new else prefix.rstrip(".") or "<config>"


def _larger(old, new) -> bool:
    """True if both are ints (not bools) and new > old."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (old, new))
    return ints and new > old


def _info(d: dict) -> ShardInfo:
    return ShardInfo(**d)


class Manifest:
    """The committed shards of a store. Readers: `load`; the driver: `create_or_open`, `commit`,
    and `compact` at the end (commit compacts now and then by itself)."""

    def __init__(self, loc: Location, config: dict, formats: list[str], shards: list[ShardInfo]):
        self.loc = loc
        self.config = config
        self.formats = list(formats)
        self._by_format: dict[str, dict[str, ShardInfo]] = {f: {} for f in formats}
        self._ranges: dict[str, list[tuple[str, str, str]]] = {f: [] for f in formats}
        self._compacted = 0  # shards in manifest.json as last written or read
        for s in shards:
            self._add(s.summary())

    @property
    def root(self) -> str:
        """The store's URL (or absolute local path)."""
        return self.loc.url

    @property
    def shards(self) -> list[ShardInfo]:
        """Every committed shard, by format then name (a canonical order: what streams)."""
        return [s for f in self.formats for s in self.shards_of(f)]

    def shards_of(self, fmt: str) -> list[ShardInfo]:
        """Committed shards of one format, sorted by name."""
        return [v for _, v in sorted(self._by_format.get(fmt, {}).items())]

    def committed(self, name: str, fmt: str) -> bool:
        """True if shard `name` is committed in format `fmt`."""
        return name in self._by_format.get(fmt, {})

    @classmethod
    def load(cls, root) -> Manifest:
        """Open an existing store read-only; UserError if there is none."""
        loc = root if isinstance(root, Location) else location(root)
        try:
            blob = loc.read_bytes(MANIFEST)
        except FileNotFoundError:
            raise UserError(
                f"no trajectory store at {loc.url}: {MANIFEST} does not exist"
            ) from None
        d = json.loads(blob)
        if d.get("schema_version") != SCHEMA_VERSION:
            raise UserError(
                f"store {loc.url} has schema_version {d.get('schema_version')!r}, "
                f"this code reads {SCHEMA_VERSION}"
            )
        if any("objects" not in s for s in d["shards"]):  # per-shard sha256, ids in the manifest
            raise UserError(
                f"store {loc.url} was written by an older hyperflow (a manifest rewritten per "
                "commit, before commit objects); collect into a new location"
            )
        m = cls(loc, d["config"], d["formats"], [_info(s) for s in d["shards"]])
        m._compacted = len(d["shards"])
        newer = [
            commit_key(f, name[: -len(".json")])
            for f in m.formats
            for name in loc.list(f"{COMMITS}/{f}")
            if name.endswith(".json")
            and not name.startswith(".")  # a local temp file of a killed driver
            and not m.committed(name[: -len(".json")], f)
        ]
        if newer:  # one batched read (concurrent requests on object stores)
            blobs = loc.fs.cat([loc.path(k) for k in newer])
            for k in newer:
                m._add(_info(json.loads(blobs[loc.path(k)])).summary())
        return m

    @classmethod
    def create_or_open(
        cls,
        root,
        config: dict,
        formats: list[str],
        implied: dict | None = None,
        grows: str | None = None,
    ):
        """New store, or the existing one if it has the same schema, config and formats.

        Refuses (UserError naming the first differing key) to mix stores of different configs.
        implied: config keys that stores written before the key existed lack, with the value
        they were written with (compared as if present). grows: a top-level integer key that may
        be larger than the store's (a store grown in place: its committed shards stay valid, and
        manifest.json takes the new config); the caller checks that its shards allow that.
        """
        if not formats or not all(isinstance(f, str) for f in formats):
            raise ValueError(f"formats must be a non-empty list of format names, got {formats!r}")
        config = json.loads(json.dumps(config))  # compare as it will read back (tuples->lists)
        loc = root if isinstance(root, Location) else location(root)
        if loc.exists(MANIFEST):
            m = cls.load(loc)
            stored = {**(implied or {}), **m.config}
            grown = grows is not None and _larger(stored.get(grows), config.get(grows))
            if grown:  # compare everything else
                stored = {**stored, grows: config[grows]}
            key = first_difference(stored, config)
            if key is not None:
                raise UserError(
                    f"store {loc.url} was written with a different config: key {key!r} differs "
                    f"(config_hash {config_hash(m.config)} vs {config_hash(config)}); "
                    "use a new store location"
                )
            if m.formats != list(formats):
                raise UserError(
                    f"store {loc.url} holds formats {m.formats}, not {list(formats)}; "
                    "use the same --format or a new store location"
                )
            if grown:
                m.config = config
                m.compact()
            return m
        m = cls(loc, config, formats, [])
        m.compact()
        return m

    def _add(self, info: ShardInfo) -> None:
        self._by_format[info.format][info.name] = info
        bisect.insort(self._ranges[info.format], (info.first_id, info.last_id, info.name))

    def _overlap(self, info: ShardInfo) -> str | None:
        # name of a committed shard whose id range meets info's; ranges are disjoint, so only
        # the neighbours in sorted order can
        ranges = self._ranges[info.format]
        k = bisect.bisect_left(ranges, (info.first_id, info.last_id, info.name))
        for lo, hi, name in ranges[max(0, k - 1) : k + 1]:
            if lo <= info.last_id and info.first_id <= hi:
                return name
        return None

    def commit(self, info: ShardInfo) -> None:
        """Write the shard's commit object (its id list included); duplicates are bugs."""
        if info.format not in self.formats:
            raise ValueError(f"shard {info.name}: format {info.format!r} not in {self.formats}")
        if self.committed(info.name, info.format):
            raise ValueError(f"shard {info.name} ({info.format}) is already committed")
        ids = info.ids or []
        if len(ids) != info.records or len(set(ids)) != len(ids):
            raise ValueError(f"shard {info.name} repeats record ids within itself")
        if (info.first_id, info.last_id) != (min(ids), max(ids)):
            raise ValueError(f"shard {info.name}: first_id/last_id do not match its ids")
        other = self._overlap(info)
        if other is not None:
            raise ValueError(
                f"shard {info.name} repeats record ids: [{info.first_id}, {info.last_id}] "
                f"overlaps shard {other}"
            )
        self.loc.write_bytes(commit_key(info.format, info.name), json.dumps(asdict(info)).encode())
        self._add(info.summary())
        pending = sum(len(v) for v in self._by_format.values()) - self._compacted
        if pending >= max(_COMPACT_MIN, _COMPACT_RATIO * self._compacted):
            self.compact()

    def compact(self) -> None:
        """Rewrite manifest.json with every shard committed so far (one atomic object write)."""
        shards = self.shards
        doc = {
            "schema_version": SCHEMA_VERSION,
            "config": self.config,
            "config_hash": config_hash(self.config),
            "formats": self.formats,
            "layout": "see engine/stores/__init__.py; commits/<format>/<shard>.json list shards "
            "committed after this file was written",
            "shards": [asdict(s) for s in shards],
        }
        self.loc.write_bytes(MANIFEST, json.dumps(doc, indent=0).encode())
        self._compacted = len(shards)
