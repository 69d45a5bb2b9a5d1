"""The WebDataset reader's fast paths (own ustar index, regex .npy header) agree with tarfile and
np.load, and fall back to them for what they do not parse."""

import io
import tarfile

import numpy as np
import pytest

from engine.storage import location
from engine.stores.wds_store import WdsStore, _load_npy, _tar_index


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    "a",
    [
        np.arange(12, dtype=np.uint8).reshape(1, 3, 2, 2),
        np.arange(5, dtype=np.int64),
        np.float32(3.5) * np.ones(()),
        np.linspace(0, 1, 6, dtype=np.float16).reshape(2, 3),
        np.zeros((0, 4), np.uint16),
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # np.load path
        np.arange(3, dtype=">i4"),
    ],
)
def test_npy_fast_parse_equals_np_load(a):
    got = _load_npy(_npy(a))
    ref = np.load(io.BytesIO(_npy(a)), allow_pickle=False)
    assert got.dtype == ref.dtype and got.shape == ref.shape and np.array_equal(got, ref)
    assert got.flags.writeable  # torch.from_numpy warns on read-only arrays


def _tar(members: list[tuple[str, bytes]], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_index_equals_tarfile_and_declines_extensions():
    members = [(f"k{i}.{ext}", bytes(range(i % 7)) * (i * 97)) for i in range(9) for ext in "ab"]
    buf = _tar(members)
    ref = [(m.name, m.offset_data, m.size) for m in tarfile.open(fileobj=io.BytesIO(buf))]
    assert _tar_index(buf) == ref and [r[0] for r in ref] == [n for n, _ in members]
    long_name = [("x" * 150 + ".json", b"{}")]  # needs a pax header
    assert _tar_index(_tar(long_name)) is None
    broken = bytearray(_tar(members))
    broken[3] ^= 0xFF  # a name byte: the header checksum no longer matches
    assert _tar_index(bytes(broken)) is None


def test_reader_falls_back_to_tarfile_for_pax_members(tmp_path, make_records):
    rec = make_records(1)[0]
    path = tmp_path / "s.tar"
    path.write_bytes(WdsStore.encode("s.tar", [rec], "delta2")["s.tar"])
    with tarfile.open(path) as src:  # rewrite with a pax header on every member
        members = [(m.name, src.extractfile(m).read()) for m in src]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = len(data), {"comment": "from another writer"}
            tar.addfile(info, io.BytesIO(data))
    assert _tar_index(path.read_bytes()) is None
    reader = WdsStore.open(location(tmp_path), "s.tar")
    got = reader.read(0)
    reader.close()
    assert got.id == rec.id and np.array_equal(got.support, rec.support)
    assert np.array_equal(got.theta, rec.theta) and got.meta == rec.meta
