import hashlib

import pytest

from engine.checksum import sha256_object, verify
from engine.inspect import inspect_store
from engine.storage import location
from engine.stores import STORES


def test_object_hash_is_plain_sha256(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"hello" * (3 << 20))  # several read blocks
    size, digest = sha256_object(location(tmp_path), "x.tar")
    assert size == 15 << 20 and digest == hashlib.sha256(b"hello" * (3 << 20)).hexdigest()


def _pick(objects: dict, which: str) -> str:
    keys = sorted(objects)
    largest = max(keys, key=lambda k: objects[k][0])
    return {"first": keys[0], "last": keys[-1], "largest": largest}[which]


@pytest.mark.parametrize("fmt", sorted(STORES))
@pytest.mark.parametrize("which", ["first", "last", "largest"])
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_flipped_byte_is_caught(tmp_path, make_store, fmt, which, where):
    m, _ = make_store(tmp_path, [3, 4], formats=[fmt])
    assert verify(tmp_path) == []
    victim = m.shards_of(fmt)[1]
    f = tmp_path / _pick(victim.objects, which)
    data = bytearray(f.read_bytes())
    pos = int(where * (len(data) - 1)) if where >= 0 else len(data) - 1
    data[pos] ^= 0x01
    f.write_bytes(bytes(data))
    problems = verify(tmp_path)
    assert len(problems) == 1 and victim.name in problems[0] and "sha256" in problems[0]
    v = inspect_store(tmp_path, verify=True)["verify"]
    assert v["ok"] is False and v["bad_shards"] == [victim.path]


@pytest.mark.parametrize("fmt", sorted(STORES))
def test_missing_and_truncated_shards_are_caught(tmp_path, make_store, fmt):
    m, _ = make_store(tmp_path, [2, 2], formats=[fmt])
    a, b = m.shards_of(fmt)
    location(tmp_path).remove(a.path)
    f = tmp_path / sorted(b.objects)[-1]
    f.write_bytes(f.read_bytes()[:-1])
    problems = verify(tmp_path)
    assert any(a.name in x and "missing" in x for x in problems)
    assert any(b.name in x and "bytes, its commit says" in x for x in problems)


def test_a_flipped_byte_on_object_storage_is_caught(s3, make_store, tmp_path):
    url = f"{s3['url']}/store"
    m, _ = make_store(url, [3, 2])
    assert verify(url) == []
    victim = m.shards_of("zarr")[0]
    key = max(victim.objects, key=lambda k: victim.objects[k][0])
    loc = location(url)
    data = bytearray(loc.read_bytes(key))
    data[len(data) // 2] ^= 0x80
    loc.write_bytes(key, bytes(data))
    problems = verify(url)
    assert len(problems) == 1 and key in problems[0] and "sha256" in problems[0]
