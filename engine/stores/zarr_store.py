"""Zarr v3 shards: STORE/traj.zarr/<shard>/ is one child group per shard, written once, whole.

A shard is built in a zarr MemoryStore and its objects handed to the storage layer (one whole
PUT each, hashed on the way); readers open it with zarr's own local or fsspec store.

Arrays of a shard group with R records (all core Zarr v3 codecs, so any implementation reads
them; each array is one `sharding_indexed` file with one inner chunk per record/row block, so a
shard is a handful of files yet a record is read without touching the others):
    theta            [R, T+1, P]  encoded per attrs["theta"] (see engine.stores.encoding)
    loss             [R, T+1]     float32
    support          [sumN, C, H, W] uint8, record r is rows support_offsets[r]:[r+1]
    support_offsets  [R+1]        int64
    labels           [sumN]       int64
Group attributes (plain JSON): schema_version, records, ids, episodes, metas,
theta = {dtype, encoding, decode} where `decode` is a numpy one-liner for plain zarr users.
"""

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import MemoryStore

from engine.record import SCHEMA_VERSION, TrajectoryRecord
from engine.storage import Location
from engine.stores.encoding import decode_recipe, decode_theta, encode_theta

ROOT = "traj.zarr"
_SUPPORT_CHUNK_BYTES = 1 << 18  # rows per support chunk ~256 KiB: a few records per chunk
_THETA_CACHE_BYTES = 32 << 20  # reader keeps up to this much stored theta (whole typical shard)
_SUPPORT_CACHE_BYTES = 16 << 20


def _blosc(typesize: int, shuffle: str = "shuffle") -> BloscCodec:
    # clevel 1: float16 delta2 theta compresses to 0.64 of its size vs 0.63 at clevel 5, ~7x faster
    return BloscCodec(typesize=typesize, cname="zstd", clevel=1, shuffle=shuffle)


def _put(g, name: str, data: np.ndarray, rows: int, shuffle: str = "shuffle") -> None:
    # One shard file per array; inner chunks of `rows` along axis 0.
    rows = max(1, min(rows, len(data)))
    a = g.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(rows,) + data.shape[1:],
        shards=(-(-len(data) // rows) * rows,) + data.shape[1:],  # a multiple of the chunk
        compressors=_blosc(data.dtype.itemsize, shuffle),
        fill_value=0,
    )
    a[...] = data


def _objects(prefix: str, build) -> dict[str, bytes]:
    # zarr writes into a dict we own; its keys become store-relative object keys
    objects: dict = {}
    build(zarr.open_group(MemoryStore(store_dict=objects), mode="w-", zarr_format=3))
    return {f"{prefix}/{k}": v.to_bytes() for k, v in objects.items()}


class ZarrStore:
    """Registry entry "zarr": keys, root preparation, shard encoder and reader."""

    subdir = ROOT  # shards live in STORE/<subdir>/
    keep = ("zarr.json",)  # entries of subdir that are not shards

    @staticmethod
    def shard_key(name: str) -> str:
        return f"{ROOT}/{name}"

    @staticmethod
    def prepare(loc: Location) -> None:
        # The root group's zarr.json is written once, by the driver, before any writer runs.
        if not loc.exists(f"{ROOT}/zarr.json"):
            root = _objects(ROOT, lambda g: g.attrs.update({"layout": "shard groups"}))
            for k, data in root.items():
                loc.write_bytes(k, data)

    @staticmethod
    def encode(key: str, records: list[TrajectoryRecord], encoding: str) -> dict[str, bytes]:
        """The objects of a shard group at store-relative `key`: {object key: bytes}."""
        return _objects(key, lambda g: ZarrStore._fill(g, records, encoding))

    @staticmethod
    def _fill(g, records: list[TrajectoryRecord], encoding: str) -> None:
        dtype = records[0].theta.dtype.name
        theta = encode_theta(np.stack([r.theta for r in records]), encoding)  # [R, T+1, P]
        sizes = [len(r.support) for r in records]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # [R+1]
        support = np.concatenate([r.support for r in records])  # [sumN, C, H, W]
        attrs = {
            "schema_version": SCHEMA_VERSION,
            "records": len(records),
            "ids": [r.id for r in records],
            "episodes": [r.episode for r in records],
            "metas": [r.meta for r in records],
            "theta": {
                "dtype": dtype,
                "encoding": encoding,
                "decode": decode_recipe(encoding, dtype),
            },
        }
        g.attrs.update(attrs)
        _put(g, "theta", theta, rows=1)
        _put(g, "loss", np.stack([r.loss for r in records]), rows=len(records))
        rows = _SUPPORT_CHUNK_BYTES // support[0].nbytes
        _put(g, "support", support, rows=rows, shuffle="bitshuffle")
        _put(g, "support_offsets", offsets, rows=len(offsets))
        _put(g, "labels", np.concatenate([r.labels for r in records]), rows=len(support))

    @staticmethod
    def open(loc: Location, key: str) -> "ZarrShardReader":
        return ZarrShardReader(loc.child(key))


class _RowCache:
    """Reads an array in aligned blocks of rows and keeps the last block.

    zarr-python pays ~1-3 ms per read call, so one call per record is slow; a block of up to
    `budget` bytes (the whole array for typical shards) serves sequential and shuffle-buffer
    reads alike with one call.
    """

    def __init__(self, array, budget: int):
        row_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:])))
        c = array.chunks[0]
        self._array, self._rows = array, max(c, budget // row_bytes // c * c)
        self._lo, self._block = 0, np.empty((0,) + array.shape[1:], array.dtype)

    def get(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) as a fresh array."""
        if not (self._lo <= lo and hi <= self._lo + len(self._block)):
            self._lo = lo // self._rows * self._rows
            end = min(self._array.shape[0], max(hi, self._lo + self._rows))
            self._block = self._array[self._lo : end]
        return self._block[lo - self._lo : hi - self._lo].copy()


class ZarrShardReader:
    """Random access to the records of one zarr shard group."""

    def __init__(
        self,
        loc: Location,
        theta_cache_bytes: int = _THETA_CACHE_BYTES,
        support_cache_bytes: int = _SUPPORT_CACHE_BYTES,
    ):
        # a local group through zarr's LocalStore, anything else through its fsspec store
        g = zarr.open_group(loc.local_path() or loc.url, mode="r")
        a = g.attrs.asdict()
        if a["schema_version"] != SCHEMA_VERSION:  # a file of another engine version
            raise ValueError(f"{loc.url}: schema {a['schema_version']}, not {SCHEMA_VERSION}")
        self._attrs = a
        self._theta = _RowCache(g["theta"], theta_cache_bytes)  # [R, T+1, P]
        self._support = _RowCache(g["support"], support_cache_bytes)  # [sumN, C, H, W]
        self._loss = g["loss"][...]  # [R, T+1], small
        self._offsets = g["support_offsets"][...]  # [R+1]
        self._labels = g["labels"][...]  # [sumN]

    def __len__(self) -> int:
        return self._attrs["records"]

    def read(self, i: int) -> TrajectoryRecord:
        if not 0 <= i < len(self):
            raise IndexError(f"record index {i} out of range [0, {len(self)})")
        t = self._attrs["theta"]
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        return TrajectoryRecord(
            id=self._attrs["ids"][i],
            episode=self._attrs["episodes"][i],
            support=self._support.get(lo, hi),
            labels=self._labels[lo:hi].copy(),
            theta=decode_theta(self._theta.get(i, i + 1)[0], t["encoding"], t["dtype"]),
            loss=self._loss[i].copy(),
            meta=self._attrs["metas"][i],
        )

    def close(self) -> None:
        pass
