"""`hyperflow collect` in local mode, `hyperflow inspect`, and collect's refusals of bad input.

The store comes from the session fixture `local_store` (tiny config: 16 episodes x 1 init, shards
of 4, both formats, 2 workers on a private local cluster).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from engine.inspect import inspect_store
from engine.manifest import Manifest
from engine.record import make_id, record_diff
from engine.stores import read_records
from jobs.cli import main

N = 16  # tiny.yaml collect.episodes; inits 1


def _by_id(store: Path, fmt: str) -> dict:
    recs = list(read_records(store, fmt))
    by_id = {r.id: r for r in recs}
    assert len(by_id) == len(recs), f"{fmt}: record ids repeat"
    return by_id


def _shard_files(store: Path) -> list[Path]:
    """Every object of every committed shard, as its commit object lists them."""
    return sorted(store / k for s in Manifest.load(store).shards for k in s.objects)


def _commit_files(store: Path) -> set[str]:
    return {f"commits/{s.format}/{s.name}.json" for s in Manifest.load(store).shards}


def _snapshot(root: Path) -> dict:
    """path -> (sha256, inode, mtime_ns) of every file under root: 'changes nothing' is strict."""
    out = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        out[f.relative_to(root).as_posix()] = (
            hashlib.sha256(f.read_bytes()).hexdigest(),
            st.st_ino,
            st.st_mtime_ns,
        )
    return out


def test_local_store_holds_every_record_once_and_formats_agree(local_store):
    store = local_store["store"]
    zarr, wds = _by_id(store, "zarr"), _by_id(store, "wds")
    expected = {make_id("c", e, 0) for e in range(N)}
    assert set(zarr) == expected and set(wds) == expected
    for rid in sorted(expected):
        assert record_diff(zarr[rid], wds[rid]) == [], f"{rid}: zarr and wds differ"
        assert zarr[rid].theta.shape[0] == 6  # T=5 steps -> 6 rows
    # nothing but the manifest, format roots and committed shards is left in the store
    committed = {f.relative_to(store).as_posix() for f in _shard_files(store)}
    extra = set(_snapshot(store)) - committed - {"manifest.json", "traj.zarr/zarr.json"}
    extra -= _commit_files(store)
    assert not extra, f"uncommitted files in the store: {sorted(extra)}"


def test_inspect_json_reports_counts_bytes_domains_config(local_store, cli):
    store = local_store["store"]
    proc = cli("inspect", str(store), "--json", "--verify")  # check=True: exit 0 when intact
    report = json.loads(proc.stdout)
    manifest = json.loads((store / "manifest.json").read_text())
    assert len(manifest["shards"]) == 8, "the run ends with every commit compacted"
    on_disk = sum(f.stat().st_size for f in _shard_files(store))
    assert report["records"] == N
    assert report["shards"] == 8  # 4 shards x 2 formats
    assert report["bytes"] == on_disk
    assert report["bytes_per_record"] == pytest.approx(on_disk / N)
    assert sum(report["domains"].values()) == N and report["domains"]
    assert report["config"] == manifest["config"]
    assert report["verify"]["ok"] is True


def test_verify_names_the_shard_of_any_flipped_byte(local_store, cli, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(local_store["store"], store)
    files = _shard_files(store)
    assert any(f.suffix == ".tar" for f in files) and any("traj.zarr" in str(f) for f in files)
    shard_of = {store / k: s.path for s in Manifest.load(store).shards for k in s.objects}
    for f in files:  # every file of every shard, in-process (a CLI run costs seconds)
        original = f.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0xFF
        f.write_bytes(bytes(flipped))
        bad = inspect_store(store, verify=True)["verify"]["bad_shards"]
        f.write_bytes(original)
        assert bad == [shard_of[f]], f"flipping a byte of {f} reported {bad}"
    # and once through the CLI: non-zero exit, stderr names the shard
    victim = next(f for f in files if f.suffix == ".tar")
    data = bytearray(victim.read_bytes())
    data[100] ^= 0x01
    victim.write_bytes(bytes(data))
    proc = cli("inspect", str(store), "--verify", check=False)
    assert proc.returncode != 0
    assert shard_of[victim] in proc.stderr, proc.stderr


def test_rerun_on_complete_store_says_complete_and_changes_nothing(local_store, capsys):
    store = local_store["store"]
    before = _snapshot(store)
    assert main(local_store["argv"]) == 0
    assert "is complete" in capsys.readouterr().out
    assert _snapshot(store) == before


# Bad input: exit code 2, a message naming the value, and nothing written or overwritten. These
# run `main` in this process: each fails before Ray is touched, and a subprocess costs seconds.
@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--set", "episodes.way=500"], ["way=500", "needs 500"]),
        (["--workers", "0"], ["--workers", "'0'"]),
        (["--set", "collect.workers=0"], ["'collect.workers' must be >= 1, got 0"]),
        (["--set", "collect.shard_size=0"], ["'collect.shard_size' must be >= 1, got 0"]),
        (["--run", "a.b"], ["'a.b'"]),
        (["--set", "collect.theta_encoding=zip"], ["collect.theta_encoding", "'zip'"]),
    ],
    ids=[
        "way-too-large",
        "workers-0",
        "config-workers-0",
        "shard-size-0",
        "run-with-dot",
        "unknown-encoding",
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    extra, expected, untrained_target, tmp_path, capsys
):
    out = tmp_path / "store"
    argv = ["collect", "--config", "tiny", "--target", str(untrained_target), "--out", str(out)]
    try:
        code = main([*argv, *extra])
    except SystemExit as e:  # argparse rejects --workers 0 itself
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    for text in expected:
        assert text in err, f"{text!r} not in stderr: {err}"
    assert not out.exists()


@pytest.mark.parametrize("family", ["elastic", "invert", "clutter"])
def test_held_out_shift_family_is_refused_and_nothing_written(
    family, untrained_target, tmp_path, capsys
):
    # the README's promise: these families are never collected, so held-out rows on them
    # measure generalisation (in-process: main() returns 2 only for a UserError, with its message)
    out = tmp_path / "store"
    argv = ["collect", "--config", "tiny", "--target", str(untrained_target), "--out", str(out)]
    assert main([*argv, "--set", f"collect.shifts=[noise,{family}]"]) == 2
    err = capsys.readouterr().err
    assert "'collect.shifts[1]'" in err and f"'{family}'" in err, err
    assert "held out" in err and "Traceback" not in err, err
    assert not out.exists(), "nothing written"


def test_out_that_is_a_file_is_refused_and_kept(untrained_target, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    argv = ["collect", "--config", "tiny", "--target", str(untrained_target), "--out", str(out)]
    assert main(argv) == 2
    assert str(out) in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_store_of_another_config_is_refused_and_unchanged(local_store, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(local_store["store"], store)
    before = _snapshot(store)
    argv = [*local_store["argv"][:-1], str(store), "--set", "collect.sigma=0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'sigma'" in err and "different config" in err, err
    assert _snapshot(store) == before


def test_unreachable_address_fails_fast_and_writes_nothing(
    untrained_target, ray_procs, free_port, tmp_path, cli
):
    # a subprocess: the real CLI, its exit code, and a hang would hit the timeout (ray.init itself
    # retries a closed port for over 10 minutes)
    out = tmp_path / "store"
    address = f"127.0.0.1:{free_port()}"
    mark = ray_procs.mark("unreachable")
    proc = cli(
        *("collect", "--config", "tiny", "--target", str(untrained_target), "--out", str(out)),
        *("--address", address),
        check=False,
        timeout=120,
        env=ray_procs.env(mark),
    )
    assert proc.returncode == 2, proc.stderr
    assert f"--address {address!r}" in proc.stderr and "cannot reach" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not ray_procs.pids(mark), "a failed connect left Ray processes"


def test_every_shift_family_and_the_clean_share_occur(untrained_target, tmp_path):
    from collections import Counter

    from hyperflow.config import load_config
    from hyperflow.model import load_target
    from hyperflow.simulator import BiasTuningSimulator, CollectSpec

    cfg = load_config("tiny", ["collect.clean_fraction=0.25", "collect.lr_max=0.1"])
    model = load_target(untrained_target)
    spec = CollectSpec.from_config(cfg, model, str(untrained_target), ["latin", "greek"], "mix")
    collector = BiasTuningSimulator(spec, str(untrained_target), None, 400)
    draws = [collector.episode(e) for e in range(400)]
    shifts = Counter(s.shift or "clean" for s, _, _ in draws)
    # 400 draws: clean ~ 100, each of the 4 families ~ 75
    assert set(shifts) == {"clean", *cfg.collect.shifts}, shifts
    assert 70 <= shifts["clean"] <= 130 and min(shifts.values()) >= 45, shifts
    lrs = [lr for _, lr, _ in draws]
    assert 0.03 <= min(lrs) < 0.035 and 0.09 < max(lrs) <= 0.1, "lr spans [lr_min, lr_max]"


def test_a_store_grows_to_more_episodes_and_keeps_every_record(
    local_store, cluster_env, cli, tmp_path
):
    # growing: the 16 committed episodes stay byte for byte (not re-simulated), 4 more are
    # collected after them, and the store then reads as one of 20 in both formats
    store = tmp_path / "store"
    shutil.copytree(local_store["store"], store)
    kept = {k: v for k, v in _snapshot(store).items() if k != "manifest.json"}
    argv = [*local_store["argv"][:-1], str(store), "--episodes", "20", "--workers", "1"]
    proc = cli(*argv, env=cluster_env("grow"))
    assert "growing store" in proc.stdout and "from 16 to 20" in proc.stdout, proc.stdout
    after = _snapshot(store)
    assert {k: after[k] for k in kept} == kept, "a committed object of the old store changed"
    assert Manifest.load(store).config["episodes"] == 20
    zarr, wds = _by_id(store, "zarr"), _by_id(store, "wds")
    expected = {make_id("c", e, 0) for e in range(20)}
    assert set(zarr) == expected and set(wds) == expected
    assert main([*argv[:-2]]) == 0, "a rerun at 20 is a resume of the grown store"


def test_episodes_do_not_depend_on_the_store_size(untrained_target):
    # what growing relies on: episode e of a 16-episode store is episode e of a larger one
    from hyperflow.config import load_config
    from hyperflow.model import load_target
    from hyperflow.simulator import BiasTuningSimulator, CollectSpec

    cfg = load_config("tiny", [])
    model = load_target(untrained_target)
    spec = CollectSpec.from_config(cfg, model, str(untrained_target), ["latin", "greek"], "c")
    small, large = (BiasTuningSimulator(spec, str(untrained_target), None, n) for n in (16, 400))
    for e in (0, 7, 15):
        (s_ep, s_lr, _), (l_ep, l_lr, _) = small.episode(e), large.episode(e)
        assert s_ep == l_ep and s_lr == l_lr, f"episode {e} differs with the store size"


@pytest.mark.parametrize(
    "episodes, manifest_episodes, extra, expected",
    [
        ("8", None, [], ["'episodes'", "different config"]),
        ("20", 14, [], ["holds 14 episodes", "collect.shard_size=4", "--episodes 20"]),
        ("20", None, ["--set", "collect.sigma=0.1"], ["'sigma'", "different config"]),
    ],
    ids=["fewer", "partial-last-shard", "other-key-differs"],
)
def test_a_store_that_cannot_grow_is_refused_and_unchanged(
    episodes, manifest_episodes, extra, expected, local_store, tmp_path, capsys
):
    store = tmp_path / "store"
    shutil.copytree(local_store["store"], store)
    if manifest_episodes is not None:
        doc = json.loads((store / "manifest.json").read_text())
        doc["config"]["episodes"] = manifest_episodes
        (store / "manifest.json").write_text(json.dumps(doc))
    before = _snapshot(store)
    argv = [*local_store["argv"][:-1], str(store), "--episodes", episodes, *extra]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    for text in expected:
        assert text in err, f"{text!r} not in stderr: {err}"
    assert "growing" not in out, out
    assert _snapshot(store) == before
