"""`hyperflow average`: a store of one record per episode, the mean of its inits' runs, that the
training stream reads like any store (its first N records: the first N episodes)."""

from dataclasses import replace

import numpy as np

from engine.manifest import Manifest
from engine.record import make_id
from engine.stores import STORES, open_store, read_records, shard_name, write_shard
from engine.stream import RecordStream
from engine.synthetic import synthetic_records
from jobs.cli import main

EPISODES, INITS, PER_SHARD = 6, 2, 2  # episodes per shard


def _source(root, inits: int = INITS) -> list:
    """A store as collect writes it: episode-major, each episode's runs share its support set."""
    config = {"steps": 4, "inits": inits, "theta_dtype": "float16", "theta_encoding": "delta2"}
    m = open_store(root, config, list(STORES))
    base = synthetic_records(EPISODES, T=4, P=32, n_support=(3, 5), image=(1, 8, 8))
    rng = np.random.default_rng(0)
    runs = [
        replace(r, id=make_id("s", e, k), theta=r.theta + rng.normal(0, 0.1, r.theta.shape))
        for e, r in enumerate(base)
        for k in range(inits)
    ]
    runs = [replace(r, theta=r.theta.astype(np.float32)) for r in runs]
    step = PER_SHARD * inits
    for i in range(0, len(runs), step):
        for fmt in STORES:
            m.commit(write_shard(root, fmt, shard_name(i // step), runs[i : i + step]))
    m.compact()
    return list(read_records(root))  # as stored (float16 theta)


def test_the_averaged_store_holds_each_episodes_mean_in_every_format(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "avg"
    runs = _source(src)
    assert main(["average", "--store", str(src), "--out", str(dst)]) == 0
    assert f"{EPISODES} records written" in capsys.readouterr().out
    m = Manifest.load(dst)
    assert m.config["inits"] == 1 and m.config["averaged_inits"] == INITS
    for fmt in STORES:
        out = list(read_records(dst, fmt))
        assert [r.id for r in out] == [f"rs-e{e:06d}-m02" for e in range(EPISODES)], fmt
        for e, r in enumerate(out):
            a, b = runs[2 * e].theta, runs[2 * e + 1].theta
            assert np.allclose(r.theta, (a.astype(np.float64) + b) / 2, atol=2e-3), (fmt, e)
            assert np.array_equal(r.support, runs[2 * e].support)
    # the training stream's first N records are the first N episodes (train.max_records nests)
    stream = RecordStream(str(dst), "zarr", 0, 1, batch_size=8, seed=0, max_records=4)
    [batch] = list(stream)
    assert sorted(batch["ids"]) == [f"rs-e{e:06d}-m02" for e in range(4)]
    # a rerun finds every shard committed and writes nothing
    assert main(["average", "--store", str(src), "--out", str(dst)]) == 0
    assert "0 records written" in capsys.readouterr().out


def test_a_store_of_one_init_or_the_source_itself_is_refused(tmp_path, capsys):
    one = tmp_path / "one"
    _source(one, inits=1)
    assert main(["average", "--store", str(one), "--out", str(tmp_path / "avg")]) == 2
    assert "inits=1: nothing to average" in capsys.readouterr().err
    assert not (tmp_path / "avg").exists()
    two = tmp_path / "two"
    _source(two)
    assert main(["average", "--store", str(two), "--out", str(two)]) == 2
    assert "is the source store itself" in capsys.readouterr().err
