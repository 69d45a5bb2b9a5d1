"""Jobs on object storage: `--target`, `--drift`, `--out` (and `--store`) as s3:// URLs, against a
real S3 endpoint on loopback (moto's server, tests/conftest.py), reached only through the standard
AWS_* variables. Each job runs from an empty working directory: nothing may land there. A bad
bucket or missing credentials end in exit code 2 with one line naming the URL, and the secret
key never shows up in output or in a stored object.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.storage import location
from hyperflow.model import load_target

SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture
def cwd(tmp_path) -> Path:
    d = tmp_path / "cwd"
    d.mkdir()
    return d


def _objects(url: str) -> dict[str, bytes]:
    loc = location(url)
    loc.fs.invalidate_cache()  # written by another process
    return {k: loc.read_bytes(k) for k in loc.find()}


def _no_secret(s3, proc, url: str) -> None:
    secret = s3["env"]["AWS_SECRET_ACCESS_KEY"]
    assert secret not in proc.stdout + proc.stderr
    assert not [k for k, v in _objects(url).items() if secret.encode() in v]


def _upload(local: Path, url: str) -> str:
    """Copy a local directory's files, byte for byte, under `url`."""
    loc = location(url)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        loc.write_bytes(f.relative_to(local).as_posix(), f.read_bytes())
    return url


def test_pretrain_writes_the_target_to_the_bucket_only(cli, s3, cwd):
    url = f"{s3['url']}/runs/target"
    fast = ("--set", "pretrain.max_seconds=1")  # a step or two: what is stored matters here
    proc = cli("pretrain", "--config", "tiny", *fast, "--out", url, env=s3["env"], cwd=cwd)
    assert f"wrote {url}/target.safetensors" in proc.stdout
    assert sorted(_objects(s3["url"])) == [
        "runs/target/target.json",
        "runs/target/target.safetensors",
    ]
    assert (
        json.loads(location(url).read_bytes("target.json"))["config"]["backbone"] == "test_resnet"
    )
    assert load_target(url).layout.size > 0
    assert list(cwd.iterdir()) == [], "pretrain wrote into the working directory"
    _no_secret(s3, proc, s3["url"])


def _refused(proc, url: str, cwd: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "--out" in lines[0], proc.stderr
    assert list(cwd.iterdir()) == []


def test_pretrain_into_a_missing_bucket_is_refused(cli, s3, cwd):
    import boto3

    url = "s3://no-such-bucket-xyz/t"
    proc = cli("pretrain", "--config", "tiny", "--out", url, env=s3["env"], cwd=cwd, check=False)
    _refused(proc, url, cwd)
    assert s3["env"]["AWS_SECRET_ACCESS_KEY"] not in proc.stdout + proc.stderr
    buckets = boto3.client("s3").list_buckets()["Buckets"]
    assert "no-such-bucket-xyz" not in {b["Name"] for b in buckets}


def test_pretrain_without_credentials_is_refused(cli, s3, cwd, tmp_path, monkeypatch):
    empty = tmp_path / "empty-aws-file"
    empty.write_text("")
    for k in SECRET_VARS:  # the s3 fixture set them in this process, which the child inherits
        monkeypatch.delenv(k, raising=False)
    env = {k: v for k, v in s3["env"].items() if k not in SECRET_VARS}
    # no ~/.aws files and no instance-metadata lookup: the credential chain ends at once
    env |= {"AWS_SHARED_CREDENTIALS_FILE": str(empty), "AWS_CONFIG_FILE": str(empty)}
    env |= {"AWS_EC2_METADATA_DISABLED": "true"}
    url = f"{s3['url']}/t"
    proc = cli("pretrain", "--config", "tiny", "--out", url, env=env, cwd=cwd, check=False)
    _refused(proc, url, cwd)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3["env"]["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3["env"]["AWS_SECRET_ACCESS_KEY"])
    assert _objects(s3["url"]) == {}, "nothing may be written"


def test_evaluate_reads_and_writes_the_bucket(cli, s3, cwd, tiny_target, ray_procs):
    from hyperflow.drift import DriftConfig, DriftNet, save_drift

    target = _upload(tiny_target, f"{s3['url']}/target")
    model = load_target(target)
    net = DriftNet(
        model.layout,
        DriftConfig("small", "target", "piecewise_cubic"),
        model.backbone,
        model.feature_dim,
        horizon=5,
    )
    save_drift(net, f"{s3['url']}/drift/piecewise_cubic")  # untrained but valid
    out = f"{s3['url']}/eval"
    argv = ["evaluate", "--config", "tiny", "--target", target, "--drift", f"{s3['url']}/drift"]
    argv += ["--methods", "direct,hyperflow_cubic", "--episodes", "1", "--workers", "1"]
    # one held-out domain: reading and writing the bucket does not depend on how many
    argv += ["--set", "evaluate.domains=[georgian-noise]", "--set", "evaluate.solver_steps=[2]"]
    argv += ["--set", "evaluate.memory=false"]
    mark = ray_procs.mark("s3-evaluate")
    env = {**s3["env"], **ray_procs.env(mark), "OMP_NUM_THREADS": "1"}
    try:
        proc = cli(*argv, "--out", out, env=env, cwd=cwd)
        left = ray_procs.wait_gone(mark)  # the private cluster ends with its driver
    finally:
        ray_procs.end(mark)
    assert not left, f"evaluate left Ray processes running: {left}"
    stored = _objects(out)
    assert set(stored) == {"results.json", "results.md", "accuracy_vs_time.png", "loss_curves.png"}
    results = json.loads(stored["results.json"])
    assert set(results["methods"]) == {"direct", "hyperflow_cubic@2"}
    assert results["target"] == target
    assert all(m["acc"]["georgian-noise"]["n"] == 1 for m in results["methods"].values())
    assert stored["accuracy_vs_time.png"].startswith(b"\x89PNG")
    assert list(cwd.iterdir()) == []
    _no_secret(s3, proc, s3["url"])


def _log(raw: bytes) -> list[dict]:
    return [json.loads(x) for x in raw.decode().splitlines()]


def test_train_checkpoints_and_resumes_on_the_bucket(cli, s3, cwd, tiny_target, tmp_path):
    # the store stays local (the engine's own tests cover stores on object storage); target,
    # checkpoints, log and drift are in the bucket
    import torch
    from safetensors.torch import load

    from hyperflow.config import load_config
    from jobs.bench.stream import write_synthetic_store

    store = tmp_path / "store"
    write_synthetic_store(store, tiny_target, load_config("tiny"), [8, 8], seed=1)
    target = _upload(tiny_target, f"{s3['url']}/target")
    tmp = tmp_path / "tmp"  # the jobs' TMPDIR: checkpoint staging must leave nothing there
    tmp.mkdir()
    env = {**s3["env"], "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}

    def train(out: str, steps: int, *extra: str, where: Path = cwd):
        argv = ["train", "--config", "tiny", "--store", str(store), "--target", target]
        # as test_train's resume tests: no support cache, so both runs round alike
        sets = ["train.batch_size=4", "train.warmup=100", "train.cache_records=0"]
        sets += ["train.checkpoint_every=2"]
        argv += [x for kv in [*sets, f"train.steps={steps}"] for x in ("--set", kv)]
        return cli(*argv, "--out", out, *extra, env=env, cwd=where, timeout=300)

    out = f"{s3['url']}/drift/run"
    train(out, 4)
    first = _objects(out)
    for step in ("step-00000002", "step-00000004"):
        for f in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
            assert f"checkpoints/{step}/{f}" in first, (step, f, sorted(first))
        assert f"checkpoints/{step}/t_generator_rank0.npy" in first
        assert f"checkpoints/{step}/progress.json" in first
    assert [r["step"] for r in _log(first["train_log.jsonl"])] == [1, 2, 3, 4]
    assert json.loads(first["drift.json"])["extra"]["steps"] == 4

    proc = train(out, 6, "--resume")
    assert f"resumed from {out}/checkpoints/step-00000004 at global step 4" in proc.stdout
    second = _objects(out)
    log = _log(second["train_log.jsonl"])
    assert log[:4] == _log(first["train_log.jsonl"]) and [r["step"] for r in log[4:]] == [5, 6]
    assert json.loads(second["drift.json"])["extra"]["steps"] == 6

    # the same 6 steps uninterrupted, on a local disk: the resume restored the whole state
    ref = tmp_path / "ref"
    train(str(ref), 6, where=tmp_path)
    ref_log = _log((ref / "train_log.jsonl").read_bytes())
    for r, q in zip(log, ref_log, strict=True):
        assert r["loss"] == pytest.approx(q["loss"], rel=1e-5, abs=1e-7), (r, q)
    got = load(second["drift.safetensors"])
    want = load((ref / "drift.safetensors").read_bytes())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
    assert list(cwd.iterdir()) == []
    assert not list(tmp.glob("hyperflow-ckpt-*")), "a staging directory was left behind"
    _no_secret(s3, proc, s3["url"])
