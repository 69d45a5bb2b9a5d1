"""Collection and evaluation across several Ray nodes on one machine (ray.cluster_utils.Cluster,
as Ray's own tests do): a head with no CPUs, so every actor runs on a worker node, and worker
nodes that are removed hard mid-run. All on 127.0.0.1; the test ends exactly the processes it
started."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import pytest
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

import engine.pool
import jobs.evaluate
from engine.collect import collect
from engine.errors import UserError
from engine.inspect import inspect_store
from engine.pool import ResilientPool
from engine.stores import open_store, read_records
from engine.synthetic import SyntheticSimulator
from jobs.cli import main

EPISODES, SHARD = 240, 12  # 20 shards, one record each per episode


class SlowSimulator(SyntheticSimulator):
    """Synthetic shards that take a while, so a removed node always has work in flight."""

    def records(self, index: int):
        time.sleep(0.4)
        return super().records(index)


@pytest.fixture(scope="module")
def nodes(ray_procs):
    """(cluster, [worker node, worker node]): a 0-CPU head and two 1-CPU worker nodes, with this
    process as the driver."""
    mark = ray_procs.mark("nodes")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ray_procs.env(mark).items():
            mp.setenv(key, value)
        # every node binds and advertises loopback only (see engine.pool.connect)
        mp.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        _reload_ray_config()  # RAY_AUTH_MODE was read when ray was imported
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
        )
        try:
            workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
            ray.init(address=cluster.address)
            assert cluster.address.startswith("127.0.0.1:"), cluster.address
            # actors unpickle SlowSimulator: ship this module by value
            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
            yield cluster, workers
        finally:
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            ray.shutdown()
            cluster.shutdown()
            mp.undo()
            _reload_ray_config()
    assert not ray_procs.wait_gone(mark, 60), "the cluster's processes outlived its shutdown"


def _reload_ray_config() -> None:
    from ray._raylet import Config

    Config.initialize("")


def test_a_node_removed_hard_mid_collection_loses_and_duplicates_nothing(nodes, tmp_path, capfd):
    cluster, workers = nodes
    store = str(tmp_path / "store")
    sim = {"episodes": EPISODES, "shard_size": SHARD, "run": "n"}
    manifest = open_store(store, {"simulator": "slow-synthetic", **sim}, ["zarr", "wds"])
    events = []

    def progress(records: int, _seconds: float) -> None:
        events.append(records)
        if len(events) == 1:  # after the first commit: one node gone, a fresh one joins
            cluster.remove_node(workers[0], allow_graceful=False)
            workers[0] = cluster.add_node(num_cpus=1)

    writer = {"simulator": SlowSimulator, "simulator_kwargs": sim, "store": store}
    writer["formats"] = ["zarr", "wds"]
    stats = collect(manifest, list(range(EPISODES // SHARD)), writer, 2, progress=progress)

    assert stats.replaced >= 1, "the removed node's actor was never replaced"
    assert "died" in capfd.readouterr().err  # each death is logged with its node and cause
    assert inspect_store(store, verify=True)["verify"]["ok"]
    for fmt in ("zarr", "wds"):
        ids = [r.id for r in read_records(store, fmt)]
        assert len(ids) == len(set(ids)) == EPISODES, fmt
        assert set(ids) == {f"rn-e{e:06d}-i00" for e in range(EPISODES)}, fmt


class Idle:
    def ping(self, x):
        return x


def test_an_actor_no_node_can_take_ends_the_job_naming_the_resources(nodes):
    start = time.monotonic()
    with pytest.raises(UserError, match=r"could not be placed.*'GPU': 1"):
        ResilientPool(Idle, 1, {}, num_cpus=1, num_gpus=1, placement_timeout=3)
    assert time.monotonic() - start < 60


def test_a_node_lost_mid_evaluation_leaves_every_episode_counted_once(
    nodes, tiny_target, tmp_path, monkeypatch
):
    cluster, workers = nodes

    class LoseANode(engine.pool.ResilientPool):
        lost = False

        def map_unordered(self, method, items, unpack=False):
            for out in super().map_unordered(method, items, unpack):
                if method == "run" and not LoseANode.lost:  # after the first episodes' rows
                    LoseANode.lost = True
                    cluster.remove_node(workers[1], allow_graceful=False)
                    workers[1] = cluster.add_node(num_cpus=1)
                yield out

    monkeypatch.setattr(jobs.evaluate, "ResilientPool", LoseANode)
    out = tmp_path / "eval"
    argv = ["evaluate", "--config", "tiny", "--target", str(tiny_target), "--out", str(out)]
    argv += ["--methods", "direct,bias_tuning", "--episodes", "4"]
    assert main([*argv, "--address", cluster.address]) == 0
    assert LoseANode.lost, "no node was lost"
    results = json.loads((out / "results.json").read_text())
    domains = set(results["domains"])
    for method in ("direct", "bias_tuning"):
        acc = results["methods"][method]["acc"]
        assert set(acc) == domains, method
        counts = Counter({d: acc[d]["n"] for d in acc})
        assert set(counts.values()) == {4}, f"{method}: episodes per domain {dict(counts)}"
