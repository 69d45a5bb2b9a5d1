"""WebDataset shards: STORE/wds/<shard>.tar, one sample per record, key = record id.

Members of a sample, in this order (webdataset groups consecutive members by key):
    <id>.json            {"id", "episode", "meta", "schema_version",
                          "theta": {"dtype", "encoding", "decode", "shape"}}
    <id>.labels.npy      int64 [N]
    <id>.loss.npy        float32 [T+1]
    <id>.support.npy.gz  uint8 [N, C, H, W]
    <id>.theta.npy.gz    theta encoded per json["theta"] (see engine.stores.encoding), or
    <id>.theta.npy       when that encoding is "raw": the float16/32 theta itself, uncompressed
All arrays are np.save'd without pickles. `.npy.gz` is a gzip of that .npy: tar + gzip +
numpy.load(allow_pickle=False) read it, and `webdataset.WebDataset(url).decode()` unzips it
(its default gz pre-handler) and returns the numpy array. gzip because both plain Python
and webdataset decode it; zstd would need an extra package, and .npz only adds a zip
container around the same deflate. Compressing members (not the whole tar) keeps
random access by member offset. Measured (T=20, P=5000, 25x1x32x32 support): a float16
delta2 record takes 0.39x the raw float32 bytes. Encoding "raw" trades bytes for read speed:
its theta member is a plain .npy, which a loader reads without inflating (quickstart records:
39 KB -> 58 KB, 0.52x the raw float32 bytes; the loader's CPU per batch halves, docs/scale.md).
The tar is written by `webdataset.TarWriter` into memory and put as one object (so on object
storage a shard appears whole or not at all); its bytes are deterministic: fixed member order,
mtime, owner, mode, and gzip with mtime=0.

Reading is on the trainer's hot path (a loader worker decodes every record of every epoch), so
the reader indexes a shard from its ustar headers directly and parses .npy headers with a
regex: tarfile's member objects and numpy's literal_eval header parse took ~2/3 of the read
time. Anything else (pax or GNU headers, other .npy versions) falls back to tarfile / np.load.
A local shard is memory-mapped; a remote one is fetched whole through the storage layer (one
GET; shards are a few MB) and parsed the same way.
"""

import gzip
import io
import json
import mmap
import os
import re
import tarfile
import zlib

import numpy as np

from engine.record import SCHEMA_VERSION, TrajectoryRecord
from engine.storage import Location
from engine.stores.encoding import decode_recipe, decode_theta, encode_theta

ROOT = "wds"
_GZIP_LEVEL = 1  # level 6 is 4.7x slower for 2.6% smaller theta


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


_NPY_V1 = re.compile(
    rb"\{'descr': '([<>|][a-z]\d+)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \}"
)


def _load_npy(data: bytes) -> np.ndarray:
    # .npy v1 as np.save writes it: magic (6) + version (2) + header length (2) + dict literal
    if data[:8] == b"\x93NUMPY\x01\x00":
        end = 10 + int.from_bytes(data[8:10], "little")
        m = _NPY_V1.match(data, 10, end)
        if m is not None:
            shape = tuple(int(x) for x in m[2].split(b",") if x.strip())
            return np.frombuffer(data, np.dtype(m[1].decode()), offset=end).reshape(shape).copy()
    return np.load(io.BytesIO(data), allow_pickle=False)


def _tar_index(buf) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of each member of a plain ustar archive held in the bytes-like
    `buf`, in order; None when a header is not a plain file header with a valid checksum (then
    tarfile reads the shard)."""
    out, pos = [], 0
    while True:
        block = buf[pos : pos + 512]
        if len(block) < 512 or block == bytes(512):  # end-of-archive marker (or truncated)
            return out if block == bytes(512) else None
        stored = block[148:156].strip(b"\0 ")
        if block[156:157] not in (b"0", b"\0") or block[124] & 0x80 or not stored:
            return None  # pax/GNU extension, base-256 size: leave it to tarfile
        if int(stored, 8) != sum(block[:148]) + 8 * 32 + sum(block[156:]):  # chksum as spaces
            return None
        size = int(block[124:136].strip(b"\0 ") or b"0", 8)
        name = block[:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0]
        out.append(((prefix + b"/" + name if prefix else name).decode(), pos + 512, size))
        pos += 512 + -(-size // 512) * 512


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)  # mtime=0: same bytes


def _members(r: TrajectoryRecord, encoding: str) -> list[tuple[str, bytes]]:
    dtype = r.theta.dtype.name
    head = {
        "id": r.id,
        "episode": r.episode,
        "meta": r.meta,
        "schema_version": SCHEMA_VERSION,
        "theta": {
            "dtype": dtype,
            "encoding": encoding,
            "decode": decode_recipe(encoding, dtype),
            "shape": list(r.theta.shape),
        },
    }
    return [
        ("json", json.dumps(head).encode()),
        ("labels.npy", _npy(r.labels)),
        ("loss.npy", _npy(r.loss)),
        ("support.npy.gz", _gz(_npy(r.support))),
        # raw theta is stored plain: a loader then reads it without inflating (the largest cost
        # of reading a gzipped record); delta encodings only pay off compressed
        ("theta.npy", _npy(encode_theta(r.theta, encoding)))
        if encoding == "raw"
        else ("theta.npy.gz", _gz(_npy(encode_theta(r.theta, encoding)))),
    ]


class WdsStore:
    """Registry entry "wds": keys, root preparation, shard encoder and reader."""

    subdir = ROOT  # shards live in STORE/<subdir>/
    keep = ()  # entries of subdir that are not shards

    @staticmethod
    def shard_key(name: str) -> str:
        return f"{ROOT}/{name}.tar"

    @staticmethod
    def prepare(loc: Location) -> None:
        loc.makedirs(ROOT)

    @staticmethod
    def encode(key: str, records: list[TrajectoryRecord], encoding: str) -> dict[str, bytes]:
        """The shard's one object at store-relative `key`: {key: tar bytes}."""
        import webdataset  # here: the package imports torch (~0.7 GB), which readers don't need

        buf = io.BytesIO()
        # encoder=False: members are bytes already; TarWriter writes them in sorted extension
        # order, which _members' order is
        sink = webdataset.TarWriter(buf, user="", group="", mtime=0, encoder=False)
        for r in records:
            sink.write({"__key__": r.id, **dict(_members(r, encoding))})
        sink.close()
        return {key: buf.getvalue()}

    @staticmethod
    def open(loc: Location, key: str) -> "WdsShardReader":
        return WdsShardReader(loc, key)


def record_of(member) -> TrajectoryRecord:
    """The record of one sample; member(ext) gives a member's bytes, .gz ones inflated."""
    head = json.loads(member("json"))
    if head["schema_version"] != SCHEMA_VERSION:  # a file of another engine version
        raise ValueError(f"record schema {head['schema_version']}, not {SCHEMA_VERSION}")
    t = head["theta"]
    theta = "theta.npy" if t["encoding"] == "raw" else "theta.npy.gz"  # see _members
    return TrajectoryRecord(
        id=head["id"],
        episode=head["episode"],
        support=_load_npy(member("support.npy.gz")),
        labels=_load_npy(member("labels.npy")),
        theta=decode_theta(_load_npy(member(theta)), t["encoding"], t["dtype"]),
        loss=_load_npy(member("loss.npy")),
        meta=head["meta"],
    )


class WdsShardReader:
    """Random access to the samples of one tar via the member offsets (headers read once)."""

    def __init__(self, loc: Location, key: str):
        path = loc.local_path(key)
        if path is None:
            self._buf = loc.read_bytes(key)
        else:  # mapped, not read: a member is a slice of the page cache (no read calls per
            # member), and a worker's memory holds only the pages it touches
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._samples: list[dict[str, tuple[int, int]]] = []  # [R] ext -> (offset, size)
        keys: dict[str, int] = {}
        try:
            members = _tar_index(self._buf)
            if members is None:
                with tarfile.open(fileobj=io.BytesIO(self._buf), mode="r:") as tar:
                    members = [(m.name, m.offset_data, m.size) for m in tar]
        except BaseException:
            self.close()
            raise
        for name, offset, size in members:
            key, ext = name.split(".", 1)
            if key not in keys:
                keys[key] = len(self._samples)
                self._samples.append({})
            self._samples[keys[key]][ext] = (offset, size)

    def __len__(self) -> int:
        return len(self._samples)

    def _member(self, i: int, ext: str) -> bytes:
        off, size = self._samples[i][ext]
        data = self._buf[off : off + size]
        return zlib.decompress(data, wbits=31) if ext.endswith(".gz") else data  # one gzip member

    def read(self, i: int) -> TrajectoryRecord:
        if not 0 <= i < len(self):
            raise IndexError(f"record index {i} out of range [0, {len(self)})")
        return record_of(lambda ext: self._member(i, ext))

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()
