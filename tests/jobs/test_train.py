"""`hyperflow train` guarantees, proven on real runs: two gloo ranks that split every epoch,
checkpoints that resume (also after SIGKILL) to the very steps an uninterrupted run takes, and
clear errors for inputs that cannot train.

The stores hold synthetic records shaped like the tiny target's collection (they need no Ray and
no simulation; what is tested here does not depend on what the trajectories mean). Subprocesses
run with one intra-op thread: on this shared 2-core machine two threads per process under load
make steps ~10x slower, and torchrun gives its ranks one thread anyway.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hyperflow.config import load_config
from hyperflow.model import TargetConfig, TargetModel, save_target
from jobs.bench.stream import summarize, write_synthetic_store
from jobs.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
LR = 1e-3  # train.lr of the tiny config (the default)


def _store(root: Path, target: Path, sizes: list[int], seed: int = 0) -> Path:
    # variable support sizes exercise the list-valued batch fields
    write_synthetic_store(root, target, load_config("tiny"), sizes, seed=seed, n_support=(10, 15))
    return root


def _train_argv(store: Path, target: Path, out: Path, *sets: str) -> list[str]:
    argv = ["train", "--config", "tiny", "--store", str(store), "--target", str(target)]
    return argv + ["--out", str(out)] + [x for kv in sets for x in ("--set", kv)]


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "drift.safetensors"))


def _warmup_cosine_lr(step: int, warmup: int, total: int) -> float:
    # the lr after `step` optimizer steps (LambdaLR factor at step), independent of world size
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# ---------------------------------------------------------------- 1. two real ranks


def _two_nodes(argv: list[str], port: int, env: dict) -> str:
    """The same train command started as each of 2 nodes (1 rank each) meeting at a loopback
    rendezvous, as on two machines; returns their joined output."""
    node = [sys.executable, "-m", "jobs.cli", *argv, "--nnodes", "2"]
    node += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test-two-nodes"]
    procs = [
        subprocess.Popen(
            node,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, f"a node exited {p.returncode}:\n{text[-3000:]}"
    return "\n".join(outputs)


@pytest.mark.parametrize("launch", ["nproc", "nodes"])
def test_two_gloo_ranks_split_every_epoch(cli, tiny_target, tmp_path, free_port, launch):
    # 41 records in uneven shards, batch 4: rank 0 gets 21 records, rank 1 gets 20, both must
    # take ceil(21 / 4) = 6 steps per epoch; 12 steps = 2 whole epochs. "nodes": two processes
    # each start 1 rank and meet through torchrun's c10d rendezvous (--nnodes, --rdzv-endpoint)
    sizes = [7, 5, 9, 3, 8, 9]
    store = _store(tmp_path / "store", tiny_target, sizes)
    out = tmp_path / "run"
    sets = ("train.steps=12", "train.batch_size=4", "train.warmup=4", "train.loader_workers=1")
    argv = _train_argv(store, tiny_target, out, *sets)
    # one thread per rank: torchrun only sets that itself for several ranks on one node
    env = {"HYPERFLOW_TRAIN_SEEN": "1", **ONE_THREAD}
    if launch == "nproc":
        proc = cli(*argv, "--nproc", "2", env=env, timeout=300)
        logs = proc.stdout + proc.stderr
    else:
        logs = _two_nodes(argv, free_port(), env)
        assert logs.count("--nnodes=2") == 2, logs[-3000:]
    assert "world size 2" in logs
    assert json.loads((out / "drift.json").read_text())["extra"]["world_size"] == 2

    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 13))
    assert {r["world"] for r in log} == {2}
    # the lr schedule counts optimizer steps, not steps x ranks (Accelerate's default)
    for r in log:
        assert r["lr"] == pytest.approx(_warmup_cosine_lr(r["step"], 4, 12)), r

    ids = {f"rsyn-e{i // 2:06d}-i{i % 2:02d}" for i in range(sum(sizes))}
    seen = [_jsonl(out / f"seen-rank{r}.jsonl") for r in (0, 1)]
    assert [[s["step"] for s in rows] for rows in seen] == [list(range(1, 13))] * 2
    for epoch in (0, 1):
        per_rank = [[i for s in rows if s["epoch"] == epoch for i in s["ids"]] for rows in seen]
        counts = [sum(s["epoch"] == epoch for s in rows) for rows in seen]
        assert counts == [6, 6], f"epoch {epoch}: unequal step counts per rank {counts}"
        assert [len(p) for p in per_rank] == [21, 20], f"epoch {epoch}: {per_rank}"
        assert all(len(set(p)) == len(p) for p in per_rank), f"epoch {epoch}: repeats in a rank"
        assert not set(per_rank[0]) & set(per_rank[1]), f"epoch {epoch}: ranks overlap"
        assert set(per_rank[0]) | set(per_rank[1]) == ids, f"epoch {epoch}: records missed"


# ---------------------------------------------------------------- 2. checkpoints and resume
# 24 records, batch 4, one rank: 6 steps per epoch, so checkpoints at steps 5 and 10 fall
# mid-epoch. warmup 100 > steps keeps the lr schedule independent of train.steps, which lets a
# 20-step run extended to 30 be compared step for step with an uninterrupted 30-step run.
# No support cache: with it, the uninterrupted run reuses encoder inputs computed in epoch 0's
# batches while the resumed run, its cache empty, re-encodes them in other batches, and the
# encoder's kernels round differently per batch size on every CPU (as they do per thread count):
# the two runs would then agree only as far as that rounding, amplified by the optimizer steps,
# lets them. Without it both take the same float ops on the same batches in one thread, and agree
# to the bit here; the tolerances below are slack, far inside what a wrong state gives.

RESUME_SETS = ("train.batch_size=4", "train.warmup=100", "train.cache_records=0")


@pytest.fixture(scope="module")
def resume_store(tiny_target, tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("resume") / "store", tiny_target, [8, 8, 8], seed=1)


@pytest.fixture(scope="module")
def reference(cli, tiny_target, resume_store, tmp_path_factory) -> Path:
    """An uninterrupted 30-step run, checkpoints every 10 steps."""
    out = tmp_path_factory.mktemp("reference") / "run"
    sets = (*RESUME_SETS, "train.steps=30", "train.checkpoint_every=10")
    cli(*_train_argv(resume_store, tiny_target, out, *sets), env=ONE_THREAD)
    return out


def _assert_same_run(out: Path, reference: Path) -> None:
    # resumed == uninterrupted: every step's loss and lr, and the final weights
    log, ref = _log(out), _log(reference)
    assert [r["step"] for r in log] == list(range(1, 31)), "log is not one row per step"
    for r, q in zip(log, ref):
        assert r["loss"] == pytest.approx(q["loss"], rel=1e-5, abs=1e-7), (r, q)
        assert r["lr"] == pytest.approx(q["lr"]), (r, q)
    got, want = _weights(out), _weights(reference)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_checkpoints_hold_every_part_of_the_state(reference):
    ckpts = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert ckpts == ["step-00000010", "step-00000020", "step-00000030"]
    for name in ckpts:
        files = {p.name for p in (reference / "checkpoints" / name).iterdir()}
        for f in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
            assert f in files, (name, files)
        assert "t_generator_rank0.npy" in files and "progress.json" in files, (name, files)
    progress = json.loads(
        (reference / "checkpoints" / "step-00000010" / "progress.json").read_text()
    )
    assert (progress["step"], progress["epoch"], progress["batches_done"]) == (10, 1, 4)


def test_resume_extends_a_finished_run_from_its_step(
    cli, tiny_target, resume_store, reference, tmp_path
):
    out = tmp_path / "run"
    first = (*RESUME_SETS, "train.steps=20", "train.checkpoint_every=10")
    cli(*_train_argv(resume_store, tiny_target, out, *first), env=ONE_THREAD)
    before = _log(out)
    assert [r["step"] for r in before] == list(range(1, 21))

    more = (*RESUME_SETS, "train.steps=30", "train.checkpoint_every=10")
    proc = cli(*_train_argv(resume_store, tiny_target, out, *more), "--resume", env=ONE_THREAD)
    assert "resumed from" in proc.stdout and "step-00000020 at global step 20" in proc.stdout
    log = _log(out)
    assert log[:20] == before, "the first 20 rows must stay as they were"
    # steps 21..30 equal the uninterrupted run's: the checkpoint's weights, optimizer, schedule,
    # RNG streams and place in the epoch were all loaded (a fresh net would diverge at step 21)
    _assert_same_run(out, reference)


def test_killed_trainer_resumes_to_the_uninterrupted_result(
    tiny_target, resume_store, reference, tmp_path
):
    out = tmp_path / "run"
    # with a loader worker (the reference has none): the batches must not depend on it
    sets = (*RESUME_SETS, "train.steps=30", "train.checkpoint_every=5", "train.loader_workers=1")
    argv = [sys.executable, "-m", "jobs.cli", *_train_argv(resume_store, tiny_target, out, *sets)]
    env = {**os.environ, **ONE_THREAD}
    # own session: SIGKILL the whole group, loader workers included, and leave nothing behind
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not list((out / "checkpoints").glob("step-*/progress.json")):
            assert proc.poll() is None, f"trainer exited {proc.returncode} before a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "drift.safetensors").exists(), "the run finished before it was killed"
    done = sorted(p.parent.name for p in (out / "checkpoints").glob("step-*/progress.json"))
    last = int(done[-1].split("-")[1])
    assert last < 30

    proc = subprocess.run(
        [*argv, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{done[-1]} at global step {last}" in proc.stdout
    # steps logged after the checkpoint by the killed run were dropped, then redone
    _assert_same_run(out, reference)


# ---------------------------------------------------------------- 3. clear errors
# In-process: every one of these is caught before training starts, so the CLI's main() is
# called directly (exit code and message as a user sees them, without a 10 s interpreter start).


def _fails(capsys, argv: list[str], *needles: str) -> str:
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}, stderr: {err}"
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"
    return err


@pytest.fixture(scope="module")
def other_layout_target(tmp_path_factory) -> Path:
    """An (untrained) target whose bias selection leaves the BatchNorm biases out."""
    out = tmp_path_factory.mktemp("other") / "target"
    save_target(TargetModel(TargetConfig(exclude=["*bn*"])).eval(), out)
    return out


# LAUNCHERS: a rank (no flag) builds the target; the --nproc launcher checks target.json instead
# (jobs.train.state.preflight, build=False), and must refuse the same stores
LAUNCHERS = [[], ["--nproc", "2"]]


@pytest.mark.parametrize("launch", LAUNCHERS)
def test_store_with_another_bias_layout_is_refused(
    capsys, tiny_target, other_layout_target, tmp_path, launch
):
    store = _store(tmp_path / "store", other_layout_target, [4])
    layout = json.loads((other_layout_target / "target.json").read_text())["layout_hash"]
    mine = json.loads((tiny_target / "target.json").read_text())["layout_hash"]
    argv = [*_train_argv(store, tiny_target, tmp_path / "run"), *launch]
    _fails(capsys, argv, f"has bias layout {layout}", f"has {mine}")


@pytest.mark.parametrize("launch", LAUNCHERS)
def test_store_of_another_target_is_refused(capsys, tiny_target, tmp_path, launch):
    twin = tmp_path / "twin"  # same architecture and layout, other weights
    save_target(TargetModel(TargetConfig()).eval(), twin)
    store = _store(tmp_path / "store", twin, [4])
    argv = [*_train_argv(store, tiny_target, tmp_path / "run"), *launch]
    _fails(capsys, argv, "was collected with target")


@pytest.mark.parametrize("launch", LAUNCHERS)
@pytest.mark.parametrize("missing", ["target.json", "target.safetensors"])
def test_a_target_without_its_files_is_refused_naming_the_file(
    capsys, tiny_target, tmp_path, launch, missing
):
    store = _store(tmp_path / "store", tiny_target, [4])
    broken = tmp_path / "broken"
    shutil.copytree(tiny_target, broken)
    (broken / missing).unlink()
    argv = [*_train_argv(store, broken, tmp_path / "run"), *launch]
    _fails(capsys, argv, f"has no {missing}")
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing written"


def test_the_launcher_checks_without_building_the_target(tiny_target, tmp_path):
    # the --nproc launcher (and Ray Train's driver, the same check) reads target.json and hashes
    # the weights, but builds no model: no timm, torchvision or torch._dynamo (~2 s of imports,
    # in a process that only starts ranks). A fresh interpreter, torchrun stubbed; the control
    # then builds the target in the same process and sees timm arrive
    store = _store(tmp_path / "store", tiny_target, [4])
    argv = [*_train_argv(store, tiny_target, tmp_path / "run"), "--nproc", "2"]
    script = f"""
import json, sys
import jobs.train.command as command
from jobs.cli import main
command.relaunch = lambda args: 0  # what torchrun would run is not under test
try:
    code = main({argv!r})
except SystemExit as e:
    code = e.code
launcher = "timm" in sys.modules
from hyperflow.model import load_target
load_target({str(tiny_target)!r})
print(json.dumps([code, launcher, "timm" in sys.modules]))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, launcher, built = json.loads(proc.stdout.strip().splitlines()[-1])
    assert code == 0, proc.stderr[-3000:]
    assert not launcher, "the launcher imported timm: it built the target"
    assert built, "control: building the target imports timm"


def test_empty_store_is_refused(capsys, tiny_target, tmp_path):
    store = _store(tmp_path / "store", tiny_target, [])  # a manifest without shards
    _fails(capsys, _train_argv(store, tiny_target, tmp_path / "run"), "is empty")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.cache_records=-1", "'train.cache_records' must be >= 0"),
        ("train.theta_noise=-0.5", "'train.theta_noise' must be >= 0"),
        ("train.encoder=test_resnet", "train.site_stats=false"),
        ("train.max_records=-1", "'train.max_records' must be >= 0"),
        ("train.max_records=5", "the store holds 4 wds records"),
    ],
)
def test_bad_train_setting_is_refused_before_writing(
    capsys, tiny_target, tmp_path, setting, message
):
    store = _store(tmp_path / "store", tiny_target, [4])
    argv = [*_train_argv(store, tiny_target, tmp_path / "run"), "--set", setting]
    _fails(capsys, argv, message, setting.split("=")[1])
    assert not (tmp_path / "run").exists(), "nothing written"


def test_resume_without_checkpoint_is_refused(capsys, tiny_target, resume_store, tmp_path):
    argv = [*_train_argv(resume_store, tiny_target, tmp_path / "run"), "--resume"]
    _fails(capsys, argv, "no complete checkpoint under", str(tmp_path / "run" / "checkpoints"))
    # the --nproc launcher checks before it starts torchrun: same message, nothing spawned
    _fails(capsys, [*argv, "--nproc", "2"], "no complete checkpoint under")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            ["--interpolant", "linear"],
            "interpolant='piecewise_cubic', this run has interpolant='linear'",
        ),
        (["--set", "train.size=base"], "train.size='small', this run has train.size='base'"),
        (["--nproc", "2"], "world_size=1, this run has world_size=2"),
    ],
)
def test_resume_with_incompatible_checkpoint_is_refused(
    capsys, tiny_target, resume_store, reference, extra, needle
):
    log = (reference / "train_log.jsonl").read_text()
    argv = [*_train_argv(resume_store, tiny_target, reference, *RESUME_SETS), "--resume", *extra]
    _fails(capsys, argv, needle)
    assert (reference / "train_log.jsonl").read_text() == log, "a refused resume wrote"


def test_fresh_run_over_checkpoints_is_refused(capsys, tiny_target, resume_store, reference):
    _fails(capsys, _train_argv(resume_store, tiny_target, reference, *RESUME_SETS), "--resume")


# ---------------------------------------------------------------- 5. the stream bench's summary


def test_stream_bench_summary():
    rows = [{"data_wait_s": 0.1, "step_s": 0.9}, {"data_wait_s": 0.0, "step_s": 1.0}]
    s = summarize(rows, world=2, batch_size=8)
    assert s["data_wait_fraction"] == pytest.approx(0.05)
    assert s["samples_per_s"] == pytest.approx(2 * 8 * 2 / 2.0)
