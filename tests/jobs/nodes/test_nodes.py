"""Collection and evaluation across several Ray nodes on one machine (the package's `nodes`
cluster: a 0-CPU head, so every actor runs on a worker node, and worker nodes that are removed
hard mid-run); and a whole pipeline submitted to that cluster as a Ray job, writing into an S3
bucket (a loopback endpoint): its pretrain, drift and SMAT stages are the package's checks that
`hyperflow pretrain|train --workers` (SMAT included) run as Ray Train workers on the worker nodes
only, with checkpoints on object storage."""

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

import engine.pool
import jobs.evaluate
from engine.collect import collect
from engine.errors import UserError
from engine.inspect import inspect_store
from engine.pool import ResilientPool
from engine.storage import location
from engine.stores import open_store, read_records
from engine.synthetic import SyntheticSimulator
from jobs.cli import main

EPISODES, SHARD = 240, 12  # 20 shards, one record each per episode
REPO = Path(__file__).resolve().parents[3]


class SlowSimulator(SyntheticSimulator):
    """Synthetic shards that take a while, so a removed node always has work in flight."""

    def records(self, index: int):
        time.sleep(0.4)
        return super().records(index)


@pytest.fixture(scope="module", autouse=True)
def ship_this_module():
    # actors unpickle SlowSimulator: ship this module by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


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
    argv += ["--methods", "direct,bias_tuning", "--episodes", "4", "--set", "evaluate.memory=false"]
    argv += ["--workers", "2"]  # an actor on each worker node: the lost node takes one
    assert main([*argv, "--address", cluster.address]) == 0
    assert LoseANode.lost, "no node was lost"
    results = json.loads((out / "results.json").read_text())
    domains = set(results["domains"])
    for method in ("direct", "bias_tuning"):
        acc = results["methods"][method]["acc"]
        assert set(acc) == domains, method
        counts = Counter({d: acc[d]["n"] for d in acc})
        assert set(counts.values()) == {4}, f"{method}: episodes per domain {dict(counts)}"


def test_a_pipeline_submitted_as_a_ray_job_finishes_with_complete_outputs(nodes, s3):
    # the job's driver runs on the 0-CPU head; collection and evaluation actors and the Ray Train
    # workers of pretrain and train (1 CPU each) can only run on the two worker nodes. The run
    # goes to the loopback bucket (the nodes' processes have its endpoint and credentials):
    # Ray Train checkpoints and every stage's outputs on object storage.
    cluster, _ = nodes
    out = f"{s3['url']}/run"
    # one drift (cubic) and SMAT: every kind of stage, at the smallest evaluation that shows it;
    # SMAT's --set reach its stage: 10 steps, a checkpoint every 5
    methods = "[direct,bias_tuning,hyperflow_cubic,smat]"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit"]
    cmd += ["--address", cluster.dashboard, "--runtime-env", "cluster/runtime_env.yaml"]
    cmd += ["--", "python", "-m", "jobs.cli", "pipeline", "--config", "tiny", "--out", out]
    cmd += ["--workers", "2", "--set", f"evaluate.methods={methods}"]
    cmd += ["--set", "evaluate.domains=[latin,georgian-noise]", "--set", "evaluate.memory=false"]
    cmd += ["--set", "smat.steps=10", "--set", "smat.checkpoint_every=5"]
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

    run = location(out)
    run.fs.invalidate_cache()  # listings cached before the job wrote

    def meta(key: str) -> dict:
        return json.loads(run.read_bytes(key))

    head = cluster.head_node.node_id
    target = meta("target/target.json")
    assert target["bias_size"] > 0
    report = inspect_store(f"{out}/store", verify=True)
    assert report["verify"]["ok"], report
    for fmt in ("zarr", "wds"):
        ids = [r.id for r in read_records(f"{out}/store", fmt)]
        assert len(ids) == len(set(ids)) == 16, fmt  # tiny.yaml: 16 episodes x 1 init
    assert run.list("drift") == ["piecewise_cubic"]
    drift = meta("drift/piecewise_cubic/drift.json")["extra"]
    smat = meta("smat/smat.json")["extra"]
    for name, m in (("pretrain", target), ("drift", drift), ("smat", smat)):
        # every training stage ran as 2 Ray Train workers, on the worker nodes only
        assert m["world_size"] == 2, name
        nodes_used = {n for a in m["attempts"] for n in a["nodes"]}
        assert len(nodes_used) == 2 and head not in nodes_used, (name, m["attempts"])
    [attempt] = target["attempts"]  # pretrain: one attempt, both ranks on distinct worker nodes
    assert len(set(attempt["nodes"])) == 2 and head not in attempt["nodes"]
    # SMAT on Ray Train into the bucket: its steps, and a checkpoint every 5 of them
    assert smat["steps"] == 10
    assert {"step-00000005", "step-00000010"} <= set(run.list("smat/checkpoints"))
    results = meta("eval/results.json")
    assert set(results["domains"]) == {"latin", "georgian-noise"}
    for name, m in results["methods"].items():
        assert set(m["acc"]) == set(results["domains"]), name
        assert {a["n"] for a in m["acc"].values()} == {2}, name  # tiny.yaml: 2 per domain
    assert {"direct", "bias_tuning", "hyperflow_cubic@5", "smat"} <= set(results["methods"])
