"""engine.ray_data: a store's WebDataset shards as a Ray Dataset equal, record for record, to what
the store's own reader returns; on a local path and on the loopback S3 endpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import ray
from ray._private import ray_constants
from ray._raylet import Config

from engine.pool import RUNTIME_ENV_VAR, connect
from engine.ray_data import read_trajectories
from engine.stores import open_store, read_records, shard_name, write_shard
from engine.synthetic import synthetic_records


@pytest.fixture(scope="module")
def local_ray(ray_procs, s3_endpoint):
    """A private single-node cluster on loopback (engine.pool.connect) under the session's Ray
    token and its own temp dir (ray_procs); its workers reach the loopback S3 endpoint (moto
    takes any credentials). Ends with exactly the processes it started."""
    mark = ray_procs.mark("ray-data")
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    env |= {"AWS_ACCESS_KEY_ID": "ray-data-test", "AWS_SECRET_ACCESS_KEY": "ray-data-test"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ray_procs.env(mark).items():
            mp.setenv(key, value)
        mp.setenv(RUNTIME_ENV_VAR, json.dumps({"env_vars": env}))
        # connect() turns Ray's loopback switch on for this process: undone afterwards
        mp.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "1")
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
        Config.initialize("")  # RAY_AUTH_MODE was read when ray was imported
        connect(None, num_cpus=1)
        try:
            yield
        finally:
            ray.shutdown()
            mp.undo()
            Config.initialize("")
    assert not ray_procs.wait_gone(mark, 60), "the local cluster outlived ray.shutdown()"


def make_store(root, sizes: list[int], formats=("wds",)) -> None:
    """Committed shards of small synthetic records (varying support sizes), one per size."""
    m = open_store(root, {"target": "ray-data-test", "T": 6}, list(formats))
    recs = synthetic_records(sum(sizes), T=6, P=96, n_support=(3, 9), image=(1, 8, 8), seed=0)
    start = 0
    for k, n in enumerate(sizes):
        for fmt in formats:
            m.commit(write_shard(root, fmt, shard_name(k), recs[start : start + n]))
        start += n


def _assert_rows_equal_records(rows: list[dict], store) -> None:
    records = {r.id: r for r in read_records(store, "wds")}
    assert sorted(row["id"] for row in rows) == sorted(records), "rows are not the records"
    for row in rows:
        r = records[row["id"]]
        assert json.loads(row["episode"]) == r.episode and json.loads(row["meta"]) == r.meta
        assert np.array_equal(row["support"], r.support) and row["support"].dtype == np.uint8
        assert np.array_equal(row["labels"], r.labels)
        # stored float16 -> float32 is exact
        assert np.array_equal(row["theta"], r.theta.astype(np.float32))
        assert np.array_equal(row["loss"], r.loss)


def test_a_local_store_reads_as_a_ray_dataset(local_ray, tmp_path):
    make_store(tmp_path, [3, 4])
    rows = read_trajectories(str(tmp_path)).take_all()
    assert len(rows) == 7
    _assert_rows_equal_records(rows, str(tmp_path))


def test_a_store_on_object_storage_reads_as_a_ray_dataset(local_ray, s3, tmp_path):
    import fsspec

    make_store(tmp_path, [2, 3])
    fsspec.filesystem("s3").put(str(tmp_path), f"{s3['bucket']}/store", recursive=True)
    url = f"{s3['url']}/store"
    rows = read_trajectories(url).take_all()
    _assert_rows_equal_records(rows, url)


def test_only_committed_shards_are_read(local_ray, tmp_path):
    make_store(tmp_path, [2])
    # a shard without a commit (a writer that died before committing) is not part of the store
    (tmp_path / "wds" / "shard-999999.tar").write_bytes(b"half-written")
    assert len(read_trajectories(str(tmp_path)).take_all()) == 2
