import json
from dataclasses import asdict

import pytest

from engine.manifest import Manifest, ShardInfo, config_hash
from hyperflow.errors import UserError


def _info(name, ids, fmt="wds"):
    return ShardInfo(name, fmt, f"{fmt}/{name}.tar", len(ids), 10, "0" * 64, ids, {"latin": 1})


def test_create_commit_reopen(tmp_path, config):
    m = Manifest.create_or_open(tmp_path, config, ["wds", "zarr"])
    assert not m.committed("shard-000000", "wds")
    m.commit(_info("shard-000001", ["a", "b"]))
    m.commit(_info("shard-000000", ["c"]))
    m.commit(_info("shard-000001", ["a", "b"], fmt="zarr"))
    again = Manifest.create_or_open(tmp_path, config, ["wds", "zarr"])
    assert [asdict(s) for s in again.shards] == [asdict(s) for s in m.shards]
    assert again.committed("shard-000000", "wds") and not again.committed("shard-000000", "zarr")
    assert [s.name for s in again.shards_of("wds")] == ["shard-000001", "shard-000000"]
    d = json.loads((tmp_path / "manifest.json").read_text())
    assert d["config_hash"] == config_hash(config) and d["schema_version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left


def test_tuples_in_config_compare_as_lists(tmp_path, config):
    Manifest.create_or_open(tmp_path, {**config, "classes": (1, 2)}, ["wds"])
    Manifest.create_or_open(tmp_path, {**config, "classes": [1, 2]}, ["wds"])


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
    m.commit(_info("shard-000000", ["a", "b"]))
    with pytest.raises(ValueError, match="already committed"):
        m.commit(_info("shard-000000", ["x"]))
    with pytest.raises(ValueError, match="repeats record id a$"):
        m.commit(_info("shard-000001", ["c", "a"]))
    with pytest.raises(ValueError, match="format"):
        m.commit(_info("shard-000002", ["d"], fmt="zarr"))
    with pytest.raises(ValueError, match="within itself"):
        m.commit(_info("shard-000003", ["e", "e"]))
    assert len(Manifest.load(tmp_path).shards) == 1


def test_load_missing_store_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no trajectory store"):
        Manifest.load(tmp_path / "nope")
