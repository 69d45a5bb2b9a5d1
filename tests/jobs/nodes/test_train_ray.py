"""`hyperflow train --workers N` as Ray Train runs on the package's multi-node cluster
(conftest.py; as Ray's own elastic tests do): a head with no CPUs, so every training rank must
run on a worker node, and worker nodes removed hard mid-run. `hyperflow train` runs as a
subprocess, as a user types it (its driver joins with --address); this process removes a node
once the run's first checkpoint exists (a refusal before any worker starts runs in this process,
already a driver of the cluster). All on 127.0.0.1; the fixture ends exactly the processes it
started. `pretrain --workers` and SMAT into a bucket as Ray Train workers are checked by
test_nodes.py's submitted pipeline, whose stages run exactly those commands.

The store holds synthetic records shaped like the tiny target's collection (no simulation: what
is tested is where ranks run and what survives a lost node). 24 records, 2 data shares of batch
2: 6 steps per epoch, 4 records per optimizer step; the first checkpoint (step 10) falls mid-epoch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hyperflow.config import load_config
from jobs.bench.stream import write_synthetic_store
from jobs.cli import main

REPO = Path(__file__).resolve().parents[3]
SETS = ("train.batch_size=2", "train.steps=30", "train.checkpoint_every=10")


@pytest.fixture(scope="module")
def store(tiny_target, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-train") / "store"
    write_synthetic_store(root, tiny_target, load_config("tiny"), [8, 8, 8], n_support=(10, 15))
    return root


def _train(cluster, store, target, out, *extra: str, when_checkpointed=None, log=None) -> int:
    """`hyperflow train ... --address` in a subprocess, its output in `log` (default OUT.log);
    `when_checkpointed()` runs here once Ray Train has registered OUT's first checkpoint.
    Returns the exit code."""
    argv = ["train", "--config", "tiny", "--store", str(store), "--target", str(target)]
    argv += ["--out", str(out), "--address", cluster.address, *extra]
    argv += [x for kv in SETS for x in ("--set", kv)]
    return _run(argv, log or Path(f"{out}.log"), out, when_checkpointed)


def _registered(out: Path) -> list[str]:
    """The checkpoints Ray Train has registered (every rank's part uploaded): the names its
    controller's snapshot lists. A node lost before then restarts the run from the start."""
    snapshot = out / "checkpoints" / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):  # not there yet, or being written
        return []
    return [r["checkpoint_dir_name"] for r in results]


def _run(argv, log: Path, out, when_checkpointed=None) -> int:
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", *argv], cwd=REPO, stdout=f, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 900
            while when_checkpointed is not None and proc.poll() is None:
                if _registered(Path(out)):
                    when_checkpointed()
                    break
                assert time.monotonic() < deadline, "no checkpoint within 900 s"
                time.sleep(0.05)
            code = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    if code not in (0, 2):
        raise AssertionError(f"hyperflow {argv[0]} exited {code}:\n{log.read_text()[-4000:]}")
    return code


def _meta(out: Path, name: str = "drift.json") -> dict:
    return json.loads((out / name).read_text())["extra"]


def _head(cluster) -> str:
    return cluster.head_node.node_id


@pytest.fixture(scope="module")
def reference(nodes, store, tiny_target, tmp_path_factory) -> Path:
    """An uninterrupted 2-worker run."""
    cluster, _ = nodes
    out = tmp_path_factory.mktemp("reference") / "run"
    assert _train(cluster, store, tiny_target, out, "--workers", "2") == 0
    return out


def test_two_workers_train_on_the_worker_nodes_only(nodes, reference):
    cluster, workers = nodes
    meta = _meta(reference)
    assert meta["world_size"] == 2 and meta["steps"] == 30
    [attempt] = meta["attempts"]
    assert attempt["world_size"] == 2 and attempt["resumed_from_step"] is None
    assert len(set(attempt["nodes"])) == 2, "both ranks on one node"
    assert _head(cluster) not in attempt["nodes"], "a rank ran on the 0-CPU head"
    log = [json.loads(x) for x in (reference / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 31))
    assert {r["world_size"] for r in log} == {2}


def test_a_node_lost_and_replaced_resumes_to_the_uninterrupted_weights(
    nodes, store, tiny_target, reference, tmp_path
):
    cluster, workers = nodes
    out = tmp_path / "run"

    def swap():
        cluster.remove_node(workers[0], allow_graceful=False)
        workers[0] = cluster.add_node(num_cpus=1)

    assert _train(cluster, store, tiny_target, out, "--workers", "2", when_checkpointed=swap) == 0
    attempts = _meta(out)["attempts"]
    assert [a["world_size"] for a in attempts] == [2, 2], attempts
    assert attempts[0]["ended"], "the first attempt's end was not recorded"
    assert attempts[1]["resumed_from_step"] is not None and attempts[1]["resumed_from_step"] < 30
    assert _head(cluster) not in {n for a in attempts for n in a["nodes"]}
    got, want = (
        load_file(str(out / "drift.safetensors")),
        load_file(str(reference / "drift.safetensors")),
    )
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k} differs from the uninterrupted run"


def test_elastic_run_finishes_on_fewer_workers_without_repeating_a_record(
    nodes, store, tiny_target, tmp_path
):
    cluster, workers = nodes
    out = tmp_path / "run"
    lost = {}

    def remove():
        lost["node"] = workers.pop(1)
        cluster.remove_node(lost["node"], allow_graceful=False)

    elastic = ("--workers", "2", "--min-workers", "1")
    try:
        code = _train(cluster, store, tiny_target, out, *elastic, when_checkpointed=remove)
    finally:
        if "node" in lost:  # the next tests get their two worker nodes back
            workers.append(cluster.add_node(num_cpus=1))
    assert code == 0
    attempts = _meta(out)["attempts"]
    assert [a["world_size"] for a in attempts] == [2, 1], attempts
    resumed = attempts[1]["resumed_from_step"]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 31)), "a step was lost or repeated"
    assert [r["world_size"] for r in log] == [2] * resumed + [1] * (30 - resumed)
    # the rows of each step over every rank, the lost rank's rows past the checkpoint dropped
    seen = []
    for f in sorted(out.glob("seen-rank*.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        seen += [r for r in rows if r["step"] <= resumed or f.name == "seen-rank0.jsonl"]
    per_step = Counter()
    per_epoch: dict[int, list[str]] = {}
    for r in seen:
        per_step[r["step"]] += len(r["ids"])
        per_epoch.setdefault(r["epoch"], []).extend(r["ids"])
    assert set(per_step.values()) == {4}, "the global batch changed across the resize"
    for epoch, ids in per_epoch.items():
        assert len(ids) == len(set(ids)), f"epoch {epoch} repeats a record"
        if len(ids) == 24:  # complete epochs hold every record once
            assert len(set(ids)) == 24
    interrupted = (resumed - 1) // 6  # 6 steps per epoch
    assert len(per_epoch[interrupted]) == 24, "the interrupted epoch dropped records"


def test_gpus_on_a_cluster_without_them_end_naming_the_resources(
    nodes, store, tiny_target, tmp_path, capsys
):
    # in this process (a driver of the cluster already): the refusal comes before any Ray Train
    # process starts, so a subprocess would only add its start-up
    cluster, _ = nodes
    out = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--store", str(store), "--target", str(tiny_target)]
    argv += ["--out", str(out), "--address", cluster.address, "--workers", "1"]
    argv += ["--set", "train.gpus_per_worker=1", "--set", "train.placement_timeout=2"]
    start = time.monotonic()
    assert main(argv) == 2
    assert "'GPU': 1" in capsys.readouterr().err
    assert time.monotonic() - start < 60
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--workers", "1", "--min-workers", "2"], "--min-workers 2 exceeds --workers 1"),
        (["--workers", "2", "--nproc", "2"], "choose one"),
        (["--min-workers", "1"], "needs --workers"),
    ],
)
def test_contradictory_rank_options_are_refused_before_writing(
    store, tiny_target, tmp_path, capsys, extra, needle
):
    out = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--store", str(store), "--target", str(tiny_target)]
    assert main([*argv, "--out", str(out), *extra]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()
