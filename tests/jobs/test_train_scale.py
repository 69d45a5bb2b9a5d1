"""`hyperflow train` at scale settings, on real runs: gradient accumulation that counts optimizer
steps and resumes to the very same result, bf16, checkpoints without the frozen target (and old
checkpoints with it still resuming), FSDP over two gloo ranks matching DDP, and clear errors.

Stores hold synthetic records (jobs.bench.stream.write_synthetic_store) shaped like the tiny
target's collection; subprocesses run with one intra-op thread (see test_train.py). Resumes start
from a copy of an uninterrupted run's directory without its newest checkpoint: what a run killed
after that checkpoint leaves behind (test_train.py also kills real runs).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyperflow.config import load_config
from hyperflow.drift import load_drift
from hyperflow.model import load_target
from jobs.bench.stream import write_synthetic_store
from jobs.cli import main as cli_main

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# 24 records, batch 4, grad_accum 2: 6 batches and 3 optimizer steps per epoch (one rank).
# No theta noise, so the loss of the synthetic trajectories falls visibly within 20 steps; no
# support cache, so a resumed run computes exactly what the uninterrupted one did (test_train.py)
ACCUM = (
    "train.batch_size=4",
    "train.grad_accum=2",
    "train.mixed_precision=bf16",
    "train.theta_noise=0",
    "train.lr=0.003",
    "train.warmup=3",
    "train.cache_bytes=0",
)


def _argv(store: Path, target: Path, out: Path, *sets: str) -> list[str]:
    argv = ["train", "--config", "tiny", "--store", str(store), "--target", str(target)]
    return argv + ["--out", str(out)] + [x for kv in sets for x in ("--set", kv)]


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _copy_before(run: Path, dest: Path, last: str) -> Path:
    """`run` without its checkpoint `last` (and the final weights): a run killed after the
    checkpoint before it."""
    shutil.copytree(run, dest)
    shutil.rmtree(dest / "checkpoints" / last)
    for f in ("drift.safetensors", "drift.json"):
        (dest / f).unlink()
    return dest


def _assert_same_losses(out: Path, reference: Path, rtol: float = 0.0, atol: float = 0.0) -> None:
    log, ref = _rows(out / "train_log.jsonl"), _rows(reference / "train_log.jsonl")
    assert [r["step"] for r in log] == [r["step"] for r in ref]
    for r, q in zip(log, ref):
        assert r["loss"] == pytest.approx(q["loss"], rel=rtol, abs=atol), (r, q)
        assert r["lr"] == pytest.approx(q["lr"]), (r, q)


def _assert_same(out: Path, reference: Path, rtol: float = 0.0, atol: float = 0.0) -> None:
    _assert_same_losses(out, reference, rtol, atol)
    got, want = (
        load_file(str(out / "drift.safetensors")),
        load_file(str(reference / "drift.safetensors")),
    )
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=k)


@pytest.fixture(scope="module")
def store(tiny_target, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "store"
    cfg = load_config("tiny")
    write_synthetic_store(root, tiny_target, cfg, [8, 8, 8], seed=1, n_support=(10, 15))
    return root


@pytest.fixture(scope="module")
def accum_run(cli, tiny_target, store, tmp_path_factory) -> Path:
    """20 optimizer steps of 2 micro-batches each, bf16, checkpoints at 10 and 20."""
    out = tmp_path_factory.mktemp("accum") / "run"
    sets = (*ACCUM, "train.steps=20", "train.checkpoint_every=10")
    cli(*_argv(store, tiny_target, out, *sets), env={**ONE_THREAD, "HYPERFLOW_TRAIN_SEEN": "1"})
    return out


def test_grad_accum_counts_optimizer_steps(accum_run):
    log = _rows(accum_run / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 21))
    for r in log:  # LambdaLR after s optimizer steps: warmup 3, then cosine down to step 20
        s = r["step"]
        factor = (s + 1) / 3 if s < 3 else 0.5 * (1 + math.cos(math.pi * (s - 3) / 17))
        assert r["lr"] == pytest.approx(0.003 * factor), r
    seen = _rows(accum_run / "seen-rank0.jsonl")  # one row per micro-batch
    assert [s["step"] for s in seen] == [s for s in range(1, 21) for _ in range(2)]
    for epoch in range(6):  # 40 batches: 6 whole epochs of 6, every record once in each
        ids = [i for s in seen if s["epoch"] == epoch for i in s["ids"]]
        assert len(ids) == len(set(ids)) == 24, epoch
    # bf16 autocast trains: the loss falls (measured ~1.0 -> ~0.7)
    losses = [r["loss"] for r in log]
    assert sum(losses[-4:]) < 0.85 * sum(losses[:4]), losses


def test_outputs_hold_float32_drift_weights_and_no_target(accum_run, tiny_target):
    meta = json.loads((accum_run / "drift.json").read_text())
    assert meta["params"] == _rows(accum_run / "train_log.jsonl")[0]["params"] > 0
    assert meta["config"]["width"] == 128 and meta["config"]["depth"] == 2  # small, resolved
    final = load_file(str(accum_run / "drift.safetensors"))
    assert {v.dtype for v in final.values()} == {torch.float32}
    for name in ("step-00000010", "step-00000020"):
        weights = load_file(str(accum_run / "checkpoints" / name / "model.safetensors"))
        # the drift's own state (weights and normalisers), not one tensor of the target's
        assert {k.removeprefix("net.") for k in weights} == set(final), name
        assert {v.dtype for v in weights.values()} == {torch.float32}
    model = load_target(tiny_target)
    net = load_drift(accum_run, model.backbone, model.feature_dim, model.layout.hash())
    assert net.num_parameters() == meta["params"]


def test_accumulating_run_resumes_exactly(cli, tiny_target, store, accum_run, tmp_path):
    out = _copy_before(accum_run, tmp_path / "run", "step-00000020")
    sets = (*ACCUM, "train.steps=20", "train.checkpoint_every=10")
    proc = cli(*_argv(store, tiny_target, out, *sets), "--resume", env=ONE_THREAD)
    assert "step-00000010 at global step 10" in proc.stdout
    _assert_same(out, accum_run)  # the same float ops in the same order: bit for bit


def test_checkpoint_written_before_scale_settings_resumes(
    cli, tiny_target, store, accum_run, tmp_path
):
    # a checkpoint of the earlier trainer: the target's weights inside the model file (the net
    # owned the encoder) and a run signature without the drift dimensions and train.fsdp
    out = _copy_before(accum_run, tmp_path / "run", "step-00000020")
    ckpt = out / "checkpoints" / "step-00000010"
    weights = load_file(str(ckpt / "model.safetensors"))
    target = load_file(str(tiny_target / "target.safetensors"))
    save_file(
        {**weights, **{f"net.encoder.{k}": v for k, v in target.items()}},
        str(ckpt / "model.safetensors"),
    )
    progress = json.loads((ckpt / "progress.json").read_text())
    for key in (
        "train.layer_dim",
        "train.width",
        "train.depth",
        "train.task_dim",
        "train.time_dim",
        "train.fsdp",
    ):
        del progress["run"][key]
    (ckpt / "progress.json").write_text(json.dumps(progress))
    sets = (*ACCUM, "train.steps=20", "train.checkpoint_every=10")
    cli(*_argv(store, tiny_target, out, *sets), "--resume", env=ONE_THREAD)
    _assert_same(out, accum_run)


# ---------------------------------------------------------------- FSDP over two gloo ranks
FSDP = ("train.steps=6", "train.checkpoint_every=3", *ACCUM)


@pytest.fixture(scope="module")
def fsdp_run(cli, tiny_target, store, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    argv = _argv(store, tiny_target, out, *FSDP, "train.fsdp=true")
    proc = cli(*argv, "--nproc", "2", timeout=300)
    return out, proc.stdout + proc.stderr


def test_fsdp_shards_and_matches_ddp(cli, tiny_target, store, fsdp_run, tmp_path):
    out, logs = fsdp_run
    params = _rows(out / "train_log.jsonl")[0]["params"]
    held = [
        int(line.split(" holds ")[1].split(" of ")[0].replace(",", ""))
        for line in logs.splitlines()
        if " holds " in line
    ]
    assert len(held) == 2 and sum(held) == params and max(held) < 0.6 * params, held
    files = {p.name for p in (out / "checkpoints" / "step-00000003").iterdir()}
    assert "pytorch_model_fsdp.bin" in files and "model.safetensors" not in files, files
    ddp = tmp_path / "ddp"
    cli(*_argv(store, tiny_target, ddp, *FSDP), "--nproc", "2", timeout=300)
    # FSDP reduce-scatters the gradients DDP all-reduces and all-gathers the weights it shards,
    # and under bf16 (ACCUM) rounds in other places than DDP's autocast: the same sums, rounded
    # differently. Measured: losses equal up to 1.5e-5 (relative), weights up to 5e-4 apart
    # after 6 steps, where Adam turned rounding into update differences (one step moves a
    # weight by up to lr = 3e-3). A lost or doubled micro-batch or rank moves the losses of
    # the steps after it by ~1e-2 (other batches' gradients) and the weights by whole steps.
    _assert_same_losses(out, ddp, rtol=1e-4)
    got, want = (load_file(str(d / "drift.safetensors")) for d in (out, ddp))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-3, msg=k)


def test_fsdp_run_resumes_exactly(cli, tiny_target, store, fsdp_run, tmp_path):
    run, _ = fsdp_run
    out = _copy_before(run, tmp_path / "run", "step-00000006")
    argv = _argv(store, tiny_target, out, *FSDP, "train.fsdp=true")
    proc = cli(*argv, "--resume", "--nproc", "2", timeout=300)
    assert "step-00000003 at global step 3" in proc.stdout + proc.stderr
    _assert_same(out, run)


# ---------------------------------------------------------------- clear errors, nothing written


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.grad_accum=0", "'train.grad_accum' must be >= 1"),
        ("train.mixed_precision=fp8", "'train.mixed_precision' must be one of"),
        ("train.cache_bytes=-1", "'train.cache_bytes' must be >= 0"),
        ("train.width=0", "'train.width' must be >= 1"),
        ("train.time_dim=3", "'train.time_dim' must be even"),
        ("train.fsdp=true", "'train.fsdp' true shards over ranks"),
    ],
)
def test_bad_scale_setting_is_refused_before_writing(
    capsys, tiny_target, store, tmp_path, setting, message
):
    code = cli_main([*_argv(store, tiny_target, tmp_path / "run"), "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists(), "nothing written"
