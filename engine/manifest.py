"""manifest.json: the list of committed shards of a store, and the config they belong to.

A shard exists for readers only once it is listed here. Only the driver process writes the
manifest; each rewrite goes to a temp file that is fsynced and then os.replace'd, so a crash
leaves either the old or the new manifest, never a torn one.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.record import SCHEMA_VERSION
from hyperflow.errors import UserError

MANIFEST = "manifest.json"


@dataclass
class ShardInfo:
    """What the driver learns from a writer about one committed shard."""

    name: str  # "shard-000012"; the same name in every format
    format: str  # key of engine.stores.STORES
    path: str  # relative to the store root, e.g. "wds/shard-000012.tar"
    records: int
    bytes: int  # total size of the shard's files
    sha256: str  # engine.checksum.sha256_path of the shard
    ids: list[str] = field(default_factory=list)  # [records], in shard order
    domains: dict[str, int] = field(default_factory=dict)  # records per episode domain


def config_hash(config: dict) -> str:
    """Short sha256 of the canonical JSON of a config."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _first_difference(old, new, prefix: str = "") -> str | None:
    # Dotted path of the first (sorted) key whose values differ, recursing into dicts.
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if k not in old or k not in new:
                return f"{prefix}{k}"
            d = _first_difference(old[k], new[k], f"{prefix}{k}.")
            if d is not None:
                return d
        return None
    return None if old == new else prefix.rstrip(".") or "<config>"


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)  # persist the rename itself
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Manifest:
    """In-memory view of STORE/manifest.json; `commit` rewrites the file atomically."""

    def __init__(self, root: Path, config: dict, formats: list[str], shards: list[ShardInfo]):
        self.root = Path(root)
        self.config = config
        self.formats = list(formats)
        self.shards = shards  # commit order == read order
        self._done = {(s.name, s.format) for s in shards}
        self._ids = {f: {i for s in shards if s.format == f for i in s.ids} for f in formats}

    @classmethod
    def load(cls, root: Path) -> "Manifest":
        """Open an existing store's manifest read-only; UserError if there is none."""
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise UserError(f"no trajectory store at {root}: {path} does not exist")
        d = json.loads(path.read_text())
        if d.get("schema_version") != SCHEMA_VERSION:
            raise UserError(
                f"store {root} has schema_version {d.get('schema_version')!r}, "
                f"this code reads {SCHEMA_VERSION}"
            )
        return cls(root, d["config"], d["formats"], [ShardInfo(**s) for s in d["shards"]])

    @classmethod
    def create_or_open(
        cls, root: Path, config: dict, formats: list[str], implied: dict | None = None
    ) -> "Manifest":
        """New manifest, or the existing one if it has the same schema, config and formats.

        Refuses (UserError naming the first differing key) to mix stores of different configs.
        implied: config keys that stores written before the key existed lack, with the value
        they were written with (compared as if present).
        """
        assert formats and all(isinstance(f, str) for f in formats), f"bad formats {formats!r}"
        config = json.loads(json.dumps(config))  # compare as it will read back (tuples->lists)
        root = Path(root)
        if (root / MANIFEST).is_file():
            m = cls.load(root)
            key = _first_difference({**(implied or {}), **m.config}, config)
            if key is not None:
                raise UserError(
                    f"store {root} was written with a different config: key {key!r} differs "
                    f"(config_hash {config_hash(m.config)} vs {config_hash(config)}); "
                    "use a new store directory"
                )
            if m.formats != list(formats):
                raise UserError(
                    f"store {root} holds formats {m.formats}, not {list(formats)}; "
                    "use the same --format or a new store directory"
                )
            return m
        root.mkdir(parents=True, exist_ok=True)
        m = cls(root, config, formats, [])
        m._write()
        return m

    def committed(self, name: str, fmt: str) -> bool:
        """True if shard `name` is committed in format `fmt`."""
        return (name, fmt) in self._done

    def shards_of(self, fmt: str) -> list[ShardInfo]:
        """Committed shards of one format, in commit order."""
        return [s for s in self.shards if s.format == fmt]

    def commit(self, info: ShardInfo) -> None:
        """Append a written shard and rewrite manifest.json; duplicate shards/ids are bugs."""
        if info.format not in self.formats:
            raise ValueError(f"shard {info.name}: format {info.format!r} not in {self.formats}")
        if self.committed(info.name, info.format):
            raise ValueError(f"shard {info.name} ({info.format}) is already committed")
        seen = self._ids[info.format]
        dup = next((i for i in info.ids if i in seen), None)
        if dup is not None or len(set(info.ids)) != len(info.ids):
            raise ValueError(f"shard {info.name} repeats record id {dup or 'within itself'}")
        assert len(info.ids) == info.records, f"shard {info.name}: ids/records mismatch"
        self.shards.append(info)
        self._done.add((info.name, info.format))
        seen.update(info.ids)
        self._write()

    def _write(self) -> None:
        _write_json_atomic(
            self.root / MANIFEST,
            {
                "schema_version": SCHEMA_VERSION,
                "config": self.config,
                "config_hash": config_hash(self.config),
                "formats": self.formats,
                "shards": [asdict(s) for s in self.shards],
            },
        )
