"""`hyperflow train --method smat` on real runs: two gloo ranks, a resume that reproduces the
uninterrupted run, trained gates at their sparsity target, the evaluator's `smat` and
`smat_finetune` methods, and settings refused before anything is written.

The store holds synthetic records shaped like the tiny target's collection (jobs.bench.stream),
as in test_train.py: what is tested here does not depend on what the trajectories mean.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.storage import location
from hyperflow.config import load_config
from hyperflow.model import TargetConfig, TargetModel, load_target
from hyperflow.smat import Smat, SmatConfig, load_smat, save_smat
from jobs.bench.stream import write_synthetic_store
from jobs.cli import main as cli_main

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TAU = 0.3
STEPS, EVERY = 60, 30  # 16 records, 2 ranks x 2 episodes: 4 steps per epoch, 15 epochs
SETS = (f"smat.tau={TAU}", f"smat.steps={STEPS}", f"smat.checkpoint_every={EVERY}")
SETS += ("smat.batch_size=2", "smat.warmup=5")


def _argv(store: Path, target: Path, out: Path | str, *sets: str) -> list[str]:
    argv = ["train", "--method", "smat", "--config", "tiny", "--store", str(store)]
    argv += ["--target", str(target), "--out", str(out)]
    return argv + [x for kv in sets for x in ("--set", kv)]


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def store(tiny_target, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("smat") / "store"
    cfg = load_config("tiny")
    # variable support sizes: the objective groups equal sizes into one folded forward
    write_synthetic_store(root, tiny_target, cfg, [6, 5, 5], seed=2, n_support=(10, 15))
    return root


@pytest.fixture(scope="module")
def trained(cli, tiny_target, store, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run, checkpoints at steps EVERY and STEPS."""
    out = tmp_path_factory.mktemp("smat-run") / "run"
    proc = cli(*_argv(store, tiny_target, out, *SETS), "--nproc", "2", env=ONE_THREAD, timeout=300)
    assert "world size 2" in proc.stdout + proc.stderr
    return out


def test_two_ranks_write_the_smat_the_evaluator_loads(trained, tiny_target):
    meta = json.loads((trained / "smat.json").read_text())
    assert meta["extra"]["world_size"] == 2 and meta["extra"]["steps"] == STEPS
    assert (
        meta["layout_hash"] == json.loads((tiny_target / "target.json").read_text())["layout_hash"]
    )
    assert [r["step"] for r in _log(trained)] == list(range(1, STEPS + 1))
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert ckpts == [f"step-{EVERY:08d}", f"step-{STEPS:08d}"]
    assert load_smat(trained, load_target(tiny_target)).cfg.tau == TAU


def test_trained_gates_keep_the_sparsity_target(trained, tiny_target):
    model = load_target(tiny_target)
    smat = load_smat(trained, model)
    kept = smat.gates() != 0  # [M, P] eval gates: what the merge uses
    share = kept.float().mean(dim=1)
    assert (share - TAU).abs().max() <= 0.02, f"share of non-zero gates {share.tolist()}"
    # ... and not because the gates stood still: training chose other coordinates to keep
    torch.manual_seed(0)  # smat.seed: every rank starts from this SMAT
    start = Smat(smat.cfg, model.layout.size, model.feature_dim).eval().gates() != 0
    replaced = (kept & ~start).sum(dim=1) / kept.sum(dim=1)  # [M]
    assert bool((replaced > 0.05).all()), f"kept coordinates barely changed: {replaced.tolist()}"


def test_resumed_run_takes_the_uninterrupted_steps(cli, tiny_target, store, trained, tmp_path):
    # a run killed after its step-EVERY checkpoint: that checkpoint, log rows past it, no smat.*
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:08d}")
    for name in ("smat.json", "smat.safetensors"):
        (out / name).unlink()
    argv = _argv(store, tiny_target, out, *SETS)
    proc = cli(*argv, "--nproc", "2", "--resume", env=ONE_THREAD, timeout=300)
    assert f"step-{EVERY:08d} at global step {EVERY}" in proc.stdout
    log, ref = _log(out), _log(trained)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1)), "not one row per step"
    for r, q in zip(log[EVERY:], ref[EVERY:]):
        assert r["loss"] == pytest.approx(q["loss"], rel=1e-5, abs=1e-7), (r, q)
        assert r["density"] == pytest.approx(q["density"], rel=1e-5), (r, q)
    got, want = (load_file(str(d / "smat.safetensors")) for d in (out, trained))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_evaluator_runs_both_smat_methods(cli, cluster_env, tiny_target, trained, tmp_path):
    out = tmp_path / "eval"
    cli(
        *("evaluate", "--config", "tiny", "--target", str(tiny_target), "--smat", str(trained)),
        # bias_tuning for the cost comparison below; no others (each method's memory is one
        # more measured adaptation)
        *("--methods", "bias_tuning,smat,smat_finetune", "--episodes", "2"),
        *("--set", "evaluate.domains=[latin,georgian-noise]", "--workers", "1"),
        *("--out", str(out)),
        env=cluster_env("smat-eval"),  # the session's Ray cluster, one thread per process
    )
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"bias_tuning", "smat", "smat_finetune"}
    for name in ("smat", "smat_finetune"):
        m = methods[name]
        assert set(m["acc"]) == {"latin", "georgian-noise"}, name
        assert all(a["n"] == 2 for a in m["acc"].values()), name
        assert m["peak_memory_bytes"] is not None and m["adapt_seconds_per_episode"] > 0, name
        assert name in (out / "results.md").read_text()
    # the zero-shot merge is one forward pass: far cheaper than bias-tuning's Adam steps, which
    # smat_finetune pays too, at bias-tuning's learning rate
    assert (
        methods["smat"]["adapt_seconds_per_episode"]
        < methods["bias_tuning"]["adapt_seconds_per_episode"]
    )
    # and no backward pass: less memory than bias-tuning's (an exact count, evaluation/memory.py)
    assert methods["smat"]["peak_memory_bytes"] < methods["bias_tuning"]["peak_memory_bytes"]
    assert methods["smat"]["lr"] is None and methods["smat_finetune"]["lr"] == 0.03
    assert (out / "accuracy_vs_time.png").stat().st_size > 0


# ---------------------------------------------------------------- clear errors, in-process


def _fails(capsys, argv: list[str], *needles: str) -> None:
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}, stderr: {err}"
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"


@pytest.mark.parametrize(
    "setting", ["smat.tau=1.5", "smat.tau=0", "smat.experts=0", "smat.gate_lr=-1", "smat.steps=0"]
)
def test_bad_smat_setting_is_refused_before_writing(capsys, tiny_target, store, tmp_path, setting):
    out = tmp_path / "run"
    _fails(capsys, [*_argv(store, tiny_target, out), "--set", setting], setting.split("=")[0])
    assert not out.exists(), "nothing written"


def test_resume_of_a_smat_run_with_other_settings_is_refused(capsys, tiny_target, store, trained):
    argv = [*_argv(store, tiny_target, trained, *SETS), "--set", "smat.experts=4", "--resume"]
    _fails(capsys, argv, "smat.experts=8, this run has smat.experts=4")


def _evaluate(target: Path, out: Path, *extra: str) -> list[str]:
    argv = ["evaluate", "--config", "tiny", "--target", str(target), "--out", str(out)]
    return [*argv, "--methods", "direct,smat", "--episodes", "1", *extra]


def test_smat_method_without_smat_is_refused(capsys, tiny_target, tmp_path):
    _fails(capsys, _evaluate(tiny_target, tmp_path / "eval"), "'smat' needs a trained SMAT")
    assert not (tmp_path / "eval").exists()


def test_smat_for_another_target_layout_is_refused(capsys, tiny_target, tmp_path):
    other = TargetModel(TargetConfig(exclude=["*bn*"])).eval()
    smat = Smat(SmatConfig(experts=2), other.layout.size, other.feature_dim)
    save_smat(smat, other, tmp_path / "smat")
    argv = _evaluate(tiny_target, tmp_path / "eval", "--smat", str(tmp_path / "smat"))
    _fails(capsys, argv, f"trained for bias layout {other.layout.hash()}")
    assert not (tmp_path / "eval").exists()


def test_smat_trains_into_a_bucket(cli, s3, tiny_target, store):
    # (checkpoints and resume on object storage are the drift trainer's code: test_storage_jobs)
    url = f"{s3['url']}/runs/smat"
    sets = ("smat.batch_size=4", "smat.steps=4", "smat.checkpoint_every=2")
    proc = cli(*_argv(store, tiny_target, url, *sets), env={**s3["env"], **ONE_THREAD})
    assert f"wrote {url}/smat.safetensors" in proc.stdout
    loc = location(url)
    loc.fs.invalidate_cache()  # written by another process
    keys = set(loc.find())
    assert {"smat.json", "smat.safetensors", "checkpoints/step-00000004/progress.json"} <= keys
    rows = loc.read_bytes("train_log.jsonl").decode().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]
    assert load_smat(url, load_target(tiny_target)).cfg.tau == load_config("tiny").smat.tau
