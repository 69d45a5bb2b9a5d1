import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import webdataset
import zarr

from engine.checksum import verify
from engine.record import record_diff
from engine.storage import location
from engine.stores import (
    STORES,
    open_store,
    read_records,
    read_shard,
    remove_uncommitted,
    write_shard,
)
from engine.stores.encoding import THETA_ENCODINGS
from engine.stores.zarr_store import ZarrShardReader
from hyperflow.errors import UserError


def _as(records, dtype):
    return [replace(r, theta=r.theta.astype(dtype)) for r in records]


@pytest.mark.parametrize("fmt", sorted(STORES))
@pytest.mark.parametrize("dtype", ["float16", "float32", None])
@pytest.mark.parametrize("encoding", sorted(THETA_ENCODINGS))
def test_roundtrip_equal_in_stored_dtype(tmp_path, config, make_records, fmt, dtype, encoding):
    recs = make_records(7)
    open_store(tmp_path, config, [fmt])
    info = write_shard(tmp_path, fmt, "shard-000003", recs, dtype, encoding)
    assert info.records == 7 and info.ids == [r.id for r in recs]
    assert sum(info.domains.values()) == 7 and info.bytes > 0
    back = list(read_shard(tmp_path, fmt, "shard-000003"))
    for a, b in zip(_as(recs, dtype or "float32"), back, strict=True):
        assert record_diff(a, b) == []


def test_both_formats_return_equal_records(tmp_path, make_store):
    _, recs = make_store(tmp_path, [4, 3, 5])
    z, w = list(read_records(tmp_path, "zarr")), list(read_records(tmp_path, "wds"))
    assert len(z) == len(w) == 12
    for a, b, c in zip(_as(recs, "float16"), z, w, strict=True):
        assert record_diff(a, b) == [] and record_diff(b, c) == []


@pytest.mark.parametrize("fmt", sorted(STORES))
def test_read_records_follow_shard_names_whatever_the_commit_order(
    tmp_path, config, make_records, fmt
):
    recs = make_records(6)
    m = open_store(tmp_path, config, [fmt])
    m.commit(write_shard(tmp_path, fmt, "shard-000001", recs[3:]))
    m.commit(write_shard(tmp_path, fmt, "shard-000000", recs[:3]))
    assert [r.id for r in read_records(tmp_path)] == [r.id for r in recs]


@pytest.mark.parametrize("fmt", sorted(STORES))
def test_rewrite_is_byte_identical(tmp_path, config, make_records, fmt):
    recs = make_records(5)
    infos = []
    for k in range(2):
        open_store(tmp_path / str(k), config, [fmt])
        infos.append(write_shard(tmp_path / str(k), fmt, "shard-000000", recs))
    assert infos[0].objects == infos[1].objects
    for key, (size, digest) in infos[0].objects.items():  # what the commit says is on disk
        data = (tmp_path / "1" / key).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == digest


@pytest.mark.parametrize("fmt", sorted(STORES))
def test_uncommitted_leftovers_are_ignored_then_removed(tmp_path, config, make_records, fmt):
    recs = make_records(9)
    m = open_store(tmp_path, config, [fmt])
    m.commit(write_shard(tmp_path, fmt, "shard-000000", recs[:3]))
    # A writer whose ShardInfo never reached the driver (no commit object) ...
    write_shard(tmp_path, fmt, "shard-000001", recs[3:6])
    # ... one killed mid-write of an object (a local temp file), and a driver killed while
    # writing a commit object and the manifest
    key = STORES[fmt].shard_key("shard-000002")
    temp = key.rsplit("/", 1)[0] + "/.shard-000002.tmp-deadbeef"
    (tmp_path / temp).write_bytes(b"partial")
    (tmp_path / "commits" / fmt / ".shard-000002.json.tmp-0badf00d").write_bytes(b"{")
    (tmp_path / ".manifest.json.tmp-12345678").write_bytes(b"{")
    assert [r.id for r in read_records(tmp_path)] == [r.id for r in recs[:3]]
    removed = remove_uncommitted(tmp_path)
    assert removed == sorted(
        [
            temp,
            STORES[fmt].shard_key("shard-000001"),
            f"commits/{fmt}/.shard-000002.json.tmp-0badf00d",
            ".manifest.json.tmp-12345678",
        ]
    )
    assert remove_uncommitted(tmp_path) == []
    assert verify(tmp_path) == [] and len(list(read_records(tmp_path))) == 3
    # Resume: the shard can now be written again and committed.
    m.commit(write_shard(tmp_path, fmt, "shard-000001", recs[3:6]))
    assert len(list(read_records(tmp_path))) == 6


@pytest.mark.parametrize("fmt", sorted(STORES))
def test_write_shard_refusals(tmp_path, config, make_records, fmt):
    recs = make_records(3)
    with pytest.raises(ValueError, match="open_store"):
        write_shard(tmp_path, fmt, "shard-000000", recs)
    open_store(tmp_path, config, [fmt])
    before = location(tmp_path).find()
    with pytest.raises(ValueError, match="shard name"):
        write_shard(tmp_path, fmt, "shard.1", recs)
    mixed = [recs[0], replace(recs[1], theta=recs[1].theta[:, :10])]
    with pytest.raises(ValueError, match="theta"):
        write_shard(tmp_path, fmt, "shard-000001", mixed)
    with pytest.raises(ValueError, match="overflows"):
        write_shard(tmp_path, fmt, "shard-000002", [replace(recs[0], theta=recs[0].theta * 1e6)])
    assert location(tmp_path).find() == before  # refused before any object is written


def test_unknown_format_is_a_user_error(tmp_path, config):
    with pytest.raises(UserError, match="'parquet'"):
        open_store(tmp_path, config, ["parquet"])


def _decode_plain(stored, theta_attrs):
    # What a user does with only numpy and the recorded encoding.
    x = stored
    for _ in range({"raw": 0, "delta": 1, "delta2": 2}[theta_attrs["encoding"]]):
        x = np.cumsum(x, axis=-2, dtype=x.dtype)
    return x.view(theta_attrs["dtype"])


def test_plain_zarr_reads_shards(tmp_path, make_store):
    _, recs = make_store(tmp_path, [4, 3], formats=["zarr"])
    root = zarr.open_group(tmp_path / "traj.zarr", mode="r")
    assert sorted(root.group_keys()) == ["shard-000000", "shard-000001"]
    g = root["shard-000001"]
    a = g.attrs.asdict()
    theta = _decode_plain(g["theta"][...], a["theta"])
    off, sup, lab = g["support_offsets"][...], g["support"][...], g["labels"][...]
    for k, r in enumerate(_as(recs[4:], "float16")):
        assert a["ids"][k] == r.id and a["episodes"][k] == r.episode and a["metas"][k] == r.meta
        assert np.array_equal(theta[k], r.theta) and np.array_equal(g["loss"][k], r.loss)
        assert np.array_equal(sup[off[k] : off[k + 1]], r.support)
        assert np.array_equal(lab[off[k] : off[k + 1]], r.labels)


def test_plain_tar_and_numpy_read_shards(tmp_path, make_store):
    _, recs = make_store(tmp_path, [5], formats=["wds"])
    samples: dict = {}
    with tarfile.open(tmp_path / "wds" / "shard-000000.tar") as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            data = tar.extractfile(m).read()
            samples.setdefault(key, {})[ext] = (
                gzip.decompress(data) if ext.endswith(".gz") else data
            )
    assert list(samples) == [r.id for r in recs]
    for r in _as(recs, "float16"):
        s = dict(samples[r.id])
        head = json.loads(s.pop("json"))
        s = {ext: np.load(io.BytesIO(data), allow_pickle=False) for ext, data in s.items()}
        assert head["episode"] == r.episode and head["meta"] == r.meta
        assert np.array_equal(_decode_plain(s["theta.npy.gz"], head["theta"]), r.theta)
        assert np.array_equal(s["support.npy.gz"], r.support)
        assert np.array_equal(s["labels.npy"], r.labels)
        assert np.array_equal(s["loss.npy"], r.loss)


def test_plain_webdataset_reads_shards(tmp_path, make_store):
    _, recs = make_store(tmp_path, [3, 4], formats=["wds"])
    urls = [str(tmp_path / "wds" / f"shard-00000{k}.tar") for k in range(2)]
    got = list(webdataset.WebDataset(urls, shardshuffle=False).decode())
    assert [s["__key__"] for s in got] == [r.id for r in recs]
    for s, r in zip(got, _as(recs, "float16"), strict=True):
        assert np.array_equal(_decode_plain(s["theta.npy.gz"], s["json"]["theta"]), r.theta)
        assert np.array_equal(s["support.npy.gz"], r.support)
        assert np.array_equal(s["labels.npy"], r.labels) and np.array_equal(s["loss.npy"], r.loss)
        assert s["json"]["episode"] == r.episode


def test_raw_theta_is_a_plain_npy_member_webdataset_decodes(tmp_path, config, make_records):
    recs = _as(make_records(3), "float16")
    open_store(tmp_path, config, ["wds"])
    write_shard(tmp_path, "wds", "shard-000001", recs, "float16", "raw")
    url = str(tmp_path / "wds" / "shard-000001.tar")
    got = list(webdataset.WebDataset(url, shardshuffle=False).decode())
    assert [s["__key__"] for s in got] == [r.id for r in recs]
    for s, r in zip(got, recs, strict=True):
        assert "theta.npy.gz" not in s and s["json"]["theta"]["encoding"] == "raw"
        assert s["theta.npy"].dtype == np.float16 and np.array_equal(s["theta.npy"], r.theta)


def test_zarr_reader_block_cache_boundaries(tmp_path, config, make_records):
    # Budgets far below a shard force many cache blocks; any order must still read exactly.
    recs = _as(make_records(9), "float16")
    open_store(tmp_path, config, ["zarr"])
    write_shard(tmp_path, "zarr", "shard-000000", recs)
    shard = location(tmp_path).child(STORES["zarr"].shard_key("shard-000000"))
    reader = ZarrShardReader(shard, theta_cache_bytes=1, support_cache_bytes=200)
    for i in [0, 8, 3, 4, 5, 1, 7, 2, 6, 6]:
        assert record_diff(reader.read(i), recs[i]) == []
