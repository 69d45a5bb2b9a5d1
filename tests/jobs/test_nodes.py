"""Collection and evaluation across several Ray nodes on one machine (ray.cluster_utils.Cluster,
as Ray's own tests do): a head with no CPUs, so every actor runs on a worker node, and worker
nodes that are removed hard mid-run; and a whole pipeline submitted to that cluster as a Ray job.
All on 127.0.0.1; the test ends exactly the processes it started.

(`ray start` cannot build this cluster here: with the loopback switch on it refuses a second
node, and with it off the nodes advertise the machine's outward address.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

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
REPO = Path(__file__).resolve().parents[2]


class SlowSimulator(SyntheticSimulator):
    """Synthetic shards that take a while, so a removed node always has work in flight."""

    def records(self, index: int):
        time.sleep(0.4)
        return super().records(index)


@pytest.fixture(scope="module")
def nodes(ray_procs, free_port):
    """(cluster, [worker node, worker node]): a 0-CPU head (with the dashboard, for job
    submission) and two 1-CPU worker nodes, with this process as the driver."""
    mark = ray_procs.mark("nodes")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ray_procs.env(mark).items():
            mp.setenv(key, value)
        # a submitted job's entrypoint `python` is looked up in the PATH the head started with
        mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        # every node binds and advertises loopback only (see engine.pool.connect)
        mp.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        _reload_ray_config()  # RAY_AUTH_MODE was read when ray was imported
        dashboard = free_port()
        head = {"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1"}
        cluster = Cluster(
            initialize_head=True, head_node_args={**head, "dashboard_port": dashboard}
        )
        cluster.dashboard = f"http://127.0.0.1:{dashboard}"
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


def test_a_pipeline_submitted_as_a_ray_job_finishes_with_complete_outputs(nodes, tmp_path):
    # the job's driver runs on the 0-CPU head; collection and evaluation actors (1 CPU each) can
    # only run on the two worker nodes
    cluster, _ = nodes
    out = tmp_path / "run"  # absolute: the job runs in its unpacked copy of the working dir
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit"]
    cmd += ["--address", cluster.dashboard, "--runtime-env", "cluster/runtime_env.yaml"]
    cmd += ["--", "python", "-m", "jobs.cli", "pipeline", "--config", "tiny", "--out", str(out)]
    proc = subprocess.run(
        cmd,
        cwd=REPO,  # runtime_env.yaml's working_dir "." is the repository
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ray job submit failed:\n{logs[-4000:]}"
    assert "succeeded" in logs, logs[-2000:]

    assert json.loads((out / "target" / "target.json").read_text())["bias_size"] > 0
    report = inspect_store(str(out / "store"), verify=True)
    assert report["verify"]["ok"], report
    for fmt in ("zarr", "wds"):
        ids = [r.id for r in read_records(str(out / "store"), fmt)]
        assert len(ids) == len(set(ids)) == 16, fmt  # tiny.yaml: 16 episodes x 1 init
    interpolants = sorted(p.name for p in (out / "drift").iterdir())
    assert interpolants == ["linear", "piecewise_cubic", "piecewise_linear"]
    assert all((out / "drift" / i / "drift.json").exists() for i in interpolants)
    results = json.loads((out / "eval" / "results.json").read_text())
    domains = set(results["domains"])
    for name, m in results["methods"].items():
        assert set(m["acc"]) == domains, name
        assert {a["n"] for a in m["acc"].values()} == {2}, name  # tiny.yaml: 2 per domain
    assert {"direct", "bias_tuning", "hyperflow_cubic@5"} <= set(results["methods"])
