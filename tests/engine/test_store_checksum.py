import hashlib
import shutil

import pytest

from engine.checksum import sha256_path, tree_files, verify
from engine.inspect import inspect_store
from engine.stores import STORES


def test_file_hash_is_plain_sha256(tmp_path):
    p = tmp_path / "x.tar"
    p.write_bytes(b"hello" * 1000)
    assert sha256_path(p) == hashlib.sha256(b"hello" * 1000).hexdigest()


def test_dir_hash_ignores_dir_name_but_not_inner_names(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "sub" / "f").write_bytes(b"123")
    (a / "g").write_bytes(b"45")
    shutil.copytree(a, tmp_path / "b")
    assert sha256_path(a) == sha256_path(tmp_path / "b")
    (tmp_path / "b" / "g").rename(tmp_path / "b" / "h")
    assert sha256_path(a) != sha256_path(tmp_path / "b")
    h = sha256_path(a)
    (a / "g").write_bytes(b"4")  # same bytes in path order, one moved between files
    (a / "sub" / "f").write_bytes(b"1235")
    assert sha256_path(a) != h


def _pick(files, which):
    largest = max(files, key=lambda p: p.stat().st_size)
    return {"first": files[0], "last": files[-1], "largest": largest}[which]


@pytest.mark.parametrize("fmt", sorted(STORES))
@pytest.mark.parametrize("which", ["first", "last", "largest"])
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_flipped_byte_is_caught(tmp_path, make_store, fmt, which, where):
    m, _ = make_store(tmp_path, [3, 4], formats=[fmt])
    assert verify(tmp_path) == []
    victim = m.shards_of(fmt)[1]
    f = _pick(tree_files(tmp_path / victim.path), which)
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
    p = tmp_path / a.path
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    f = tree_files(tmp_path / b.path)[-1]
    f.write_bytes(f.read_bytes()[:-1])
    problems = verify(tmp_path)
    assert any(a.name in x and "missing" in x for x in problems)
    assert any(b.name in x and "bytes on disk" in x for x in problems)
