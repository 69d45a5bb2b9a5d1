import json
from dataclasses import asdict

import pytest

from engine.manifest import Manifest, ShardInfo, config_hash
from hyperflow.errors import UserError


def _info(name, ids, fmt="wds"):
    objects = {f"{fmt}/{name}.tar": [10, "0" * 64]}
    return ShardInfo(
        name, fmt, f"{fmt}/{name}.tar", len(ids), 10, objects, min(ids), max(ids), {"la": 1}, ids
    )


def test_create_commit_reopen(tmp_path, config):
    m = Manifest.create_or_open(tmp_path, config, ["wds", "zarr"])
    assert not m.committed("shard-000000", "wds")
    m.commit(_info("shard-000001", ["c", "d"]))
    m.commit(_info("shard-000000", ["a"]))
    m.commit(_info("shard-000001", ["c", "d"], fmt="zarr"))
    again = Manifest.create_or_open(tmp_path, config, ["wds", "zarr"])
    assert [asdict(s) for s in again.shards] == [asdict(s) for s in m.shards]
    assert all(s.ids is None for s in again.shards), "opening a store loads no record ids"
    assert again.committed("shard-000000", "wds") and not again.committed("shard-000000", "zarr")
    assert [s.name for s in again.shards_of("wds")] == ["shard-000000", "shard-000001"]
    d = json.loads((tmp_path / "manifest.json").read_text())
    assert d["config_hash"] == config_hash(config) and d["schema_version"] == 1
    assert d["shards"] == []  # three commits: not compacted yet, read from their objects
    commit = json.loads((tmp_path / "commits" / "wds" / "shard-000001.json").read_text())
    assert commit["ids"] == ["c", "d"] and commit["records"] == 2
    m.compact()
    d = json.loads((tmp_path / "manifest.json").read_text())
    assert [(s["name"], s["format"]) for s in d["shards"]] == [
        ("shard-000000", "wds"),
        ("shard-000001", "wds"),
        ("shard-000001", "zarr"),
    ]
    assert all(s["ids"] is None for s in d["shards"]), "the compaction holds no id lists"
    again = Manifest.load(tmp_path)
    assert [asdict(s) for s in again.shards] == [asdict(s) for s in m.shards]
    hidden = [p.name for p in tmp_path.rglob(".*")]
    assert not hidden, f"temp files left: {hidden}"


def test_manifest_bytes_per_commit_stay_bounded(tmp_path, config):
    # compactions are spaced geometrically: rewriting manifest.json costs O(1) per commit
    m = Manifest.create_or_open(tmp_path, config, ["wds"])
    written, path = [], tmp_path / "manifest.json"
    for k in range(600):
        stamp = path.stat().st_mtime_ns, path.stat().st_ino
        m.commit(_info(f"shard-{k:06d}", [f"r{k:06d}-a", f"r{k:06d}-b"]))
        if (path.stat().st_mtime_ns, path.stat().st_ino) != stamp:
            written.append(path.stat().st_size)
    assert 3 <= len(written) <= 12, f"{len(written)} compactions for 600 commits"
    per_commit = sum(written) / 600
    one_shard = written[-1] / len(Manifest.load(tmp_path).shards)
    assert per_commit < 6 * one_shard, (per_commit, one_shard)
    assert len(Manifest.load(tmp_path).shards) == 600


def test_tuples_in_config_compare_as_lists(tmp_path, config):
    # a config holding a tuple reads back from manifest.json with a list: the same config, so
    # reopening the store must not be refused as "written with a different config"
    created = Manifest.create_or_open(tmp_path, {**config, "classes": (1, 2)}, ["wds"])
    assert created.config["classes"] == [1, 2], "kept as it will read back"
    as_list = Manifest.create_or_open(tmp_path, {**config, "classes": [1, 2]}, ["wds"])
    as_tuple = Manifest.create_or_open(tmp_path, {**config, "classes": (1, 2)}, ["wds"])
    assert as_list.config == as_tuple.config == Manifest.load(tmp_path).config == created.config


@pytest.mark.parametrize(
    "change,key",
    [
        ({"T": 21}, "'T'"),
        ({"layout_hash": "other"}, "'layout_hash'"),
        ({"sigma": {"init": 0.1}}, "'sigma.init'"),
        ({"new_key": 1}, "'new_key'"),
    ],
)
def test_refuses_other_config_naming_the_key(tmp_path, config, change, key):
    Manifest.create_or_open(tmp_path, config, ["wds"])
    with pytest.raises(UserError, match=key):
        Manifest.create_or_open(tmp_path, {**config, **change}, ["wds"])


def test_a_key_older_stores_lack_compares_as_its_implied_value(tmp_path, config):
    Manifest.create_or_open(tmp_path, config, ["wds"])  # written before "codec" existed
    implied = {"codec": "old"}
    Manifest.create_or_open(tmp_path, {**config, "codec": "old"}, ["wds"], implied)
    with pytest.raises(UserError, match="'codec'"):
        Manifest.create_or_open(tmp_path, {**config, "codec": "new"}, ["wds"], implied)
    with pytest.raises(UserError, match="'codec'"):  # nothing implied: a new key differs
        Manifest.create_or_open(tmp_path, {**config, "codec": "old"}, ["wds"])


def test_refuses_missing_key(tmp_path, config):
    Manifest.create_or_open(tmp_path, config, ["wds"])
    with pytest.raises(UserError, match="'target'"):
        Manifest.create_or_open(
            tmp_path, {k: v for k, v in config.items() if k != "target"}, ["wds"]
        )


def test_refuses_other_schema_and_formats(tmp_path, config):
    Manifest.create_or_open(tmp_path, config, ["wds"])
    with pytest.raises(UserError, match="formats"):
        Manifest.create_or_open(tmp_path, config, ["wds", "zarr"])
    path = tmp_path / "manifest.json"
    path.write_text(path.read_text().replace('"schema_version": 1', '"schema_version": 0'))
    with pytest.raises(UserError, match="schema_version"):
        Manifest.create_or_open(tmp_path, config, ["wds"])


def test_commit_refuses_duplicates(tmp_path, config):
    m = Manifest.create_or_open(tmp_path, config, ["wds"])
    m.commit(_info("shard-000000", ["b", "c"]))
    m.commit(_info("shard-000005", ["x", "y"]))
    with pytest.raises(ValueError, match="already committed"):
        m.commit(_info("shard-000000", ["q"]))
    for ids in (["a", "b"], ["c"], ["bb"], ["a", "d"], ["d", "x"], ["y", "z"], ["a", "z"]):
        with pytest.raises(ValueError, match="overlaps shard shard-00000[05]"):
            m.commit(_info("shard-000001", ids))
    with pytest.raises(ValueError, match="format"):
        m.commit(_info("shard-000002", ["d"], fmt="zarr"))
    with pytest.raises(ValueError, match="within itself"):
        m.commit(_info("shard-000003", ["e", "e"]))
    m.commit(_info("shard-000001", ["d", "e"]))  # between the two: fine
    assert len(Manifest.load(tmp_path).shards) == 3


def test_load_missing_store_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no trajectory store"):
        Manifest.load(tmp_path / "nope")


def test_a_store_of_the_older_manifest_format_is_refused_clearly(tmp_path, config):
    old = {"schema_version": 1, "config": config, "formats": ["wds"], "shards": []}
    old["shards"].append(
        {"name": "shard-000000", "format": "wds", "path": "wds/shard-000000.tar", "records": 1,
         "bytes": 10, "sha256": "0" * 64, "ids": ["a"], "domains": {"latin": 1}}
    )  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(UserError, match="older hyperflow"):
        Manifest.load(tmp_path)
