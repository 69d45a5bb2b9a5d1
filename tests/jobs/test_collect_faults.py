"""Collection under faults, and its determinism: the same records whatever happens to the run.

Runs share the session's real Ray cluster (`ray_cluster`): in-process runs drive `hyperflow
collect` through `jobs.cli.main` with this process as the Ray driver; the driver-kill test runs
the CLI as a subprocess on a private local cluster, then resumes it on the shared one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

import engine.collect
import jobs.collect.command
from engine.collect import ShardWriter
from engine.inspect import inspect_store
from engine.manifest import MANIFEST, Manifest
from engine.pool import connect
from engine.record import make_id, record_diff
from engine.stores import read_records
from jobs.cli import main

N = 16  # tiny.yaml collect.episodes; inits 1
REPO = Path(__file__).resolve().parents[2]


def _by_id(store: Path, fmt: str) -> dict:
    recs = list(read_records(store, fmt))
    by_id = {r.id: r for r in recs}
    assert len(by_id) == len(recs), f"{fmt}: record ids repeat"
    return by_id


def _assert_same_records(store: Path, reference: Path) -> None:
    """Both formats of `store` hold exactly the records of `reference`, field for field."""
    ref = _by_id(reference, "zarr")
    assert set(ref) == {make_id("c", e, 0) for e in range(N)}
    for fmt in ("zarr", "wds"):
        got = _by_id(store, fmt)
        assert set(got) == set(ref), f"{fmt}: ids differ"
        for rid in sorted(ref):
            assert record_diff(got[rid], ref[rid]) == [], f"{fmt} {rid} differs"


def _assert_clean(store: Path) -> None:
    """Checksums hold and nothing but committed shards is in the store."""
    assert inspect_store(store, verify=True)["verify"]["ok"]
    shards = Manifest.load(store).shards
    keep = {MANIFEST, "traj.zarr/zarr.json"} | {k for s in shards for k in s.objects}
    keep |= {f"commits/{s.format}/{s.name}.json" for s in shards}
    on_disk = {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}
    stray = {p for p in on_disk if not any(p == k or p.startswith(k + "/") for k in keep)}
    assert not stray, f"uncommitted leftovers: {sorted(stray)}"


def _fingerprints(store: Path, rel_paths: list[str]) -> dict:
    """sha256, inode and mtime of every file under the given shard paths."""
    out = {}
    for rel in rel_paths:
        p = store / rel
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            st = f.stat()
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            out[f.relative_to(store).as_posix()] = (digest, st.st_ino, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def driver(ray_cluster):
    """This process as a driver of the session cluster, for in-process `main` runs."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ray_cluster["env"].items():
            mp.setenv(key, value)
        # Ray reads RAY_AUTH_MODE into its config when first imported, long before this fixture,
        # and never auto-enables token auth for an explicit address: re-read the config the way
        # Ray's own token set-up does (a CLI driver gets the variables at start-up instead)
        _reload_ray_config()
        try:
            connect(ray_cluster["address"])
            # actors unpickle the test's Collector subclass: ship it by value (this module is
            # not importable on the workers)
            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
            yield ray_cluster
        finally:
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            ray.shutdown()
            mp.undo()
            _reload_ray_config()


def _reload_ray_config() -> None:
    from ray._raylet import Config

    Config.initialize("")


def _collect_argv(local_store, out: Path, *extra: str) -> list[str]:
    argv = list(local_store["argv"])
    argv[argv.index("--out") + 1] = str(out)
    return [*argv, *extra]


def test_one_worker_writes_the_same_records_as_two(driver, local_store, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(_collect_argv(local_store, store, "--workers", "1")) == 0
    assert "1 workers" in capsys.readouterr().out
    _assert_same_records(store, local_store["store"])
    _assert_clean(store)


class KillOnceWriter(ShardWriter):
    """A ShardWriter whose actor `ray.kill`s itself inside shard KILL_AT, once per store.

    The kill waits for the first commit, so the run loses an actor midway with shard KILL_AT in
    flight (killed while holding it, never finished): it must be redone by a replacement actor.
    """

    KILL_AT = 3  # the last shard: another actor can always commit one first

    def shard(self, index: int, formats: list[str] | None = None) -> dict:
        store = Path(self.store)
        claim = store.parent / f"{store.name}.killed"  # outside the store
        if index == self.KILL_AT and _claim(claim):
            _wait_for_first_commit(store)
            ray.kill(ray.get_runtime_context().current_actor)  # as an operator or driver would
            time.sleep(600)  # not reached: the kill ends this process
        return super().shard(index, formats)


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _wait_for_first_commit(store: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not Manifest.load(store).shards:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no shard committed to {store} in {timeout} s")
        time.sleep(0.1)


def test_actor_killed_midway_loses_and_duplicates_nothing(
    driver, local_store, tmp_path, capsys, monkeypatch
):
    store = tmp_path / "store"
    faulty = functools.partial(engine.collect.collect, actor_cls=KillOnceWriter)
    monkeypatch.setattr(jobs.collect.command, "collect", faulty)
    assert main(_collect_argv(local_store, store, "--workers", "2")) == 0
    assert (tmp_path / "store.killed").exists(), "the fault was never injected"
    assert "actors replaced: 1" in capsys.readouterr().out
    _assert_same_records(store, local_store["store"])
    _assert_clean(store)


def test_driver_killed_after_first_commit_resumes_exactly(
    driver, local_store, ray_procs, tmp_path, cli, capsys
):
    store = tmp_path / "store"
    argv = _collect_argv(local_store, store, "--set", "collect.shard_size=2")  # 8 shards
    n_shards = 8

    # 1. local mode in its own process group; SIGKILL the group once a shard is committed
    mark = ray_procs.mark("killed-driver")
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", *argv],
            cwd=REPO,
            env={**os.environ, **ray_procs.env(mark), "OMP_NUM_THREADS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while not (store / MANIFEST).is_file() or not _shards(store):
            assert proc.poll() is None, f"collect exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no commit within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # its private cluster: the raylet and GCS died with the group; actors run in their own
        # sessions and must not outlive it (a late rename would race the resumed run)
        ray_procs.end(mark)
    first = _shards(store)
    names = {s["name"] for s in first}
    assert 1 <= len(names) < n_shards, f"kill came too late to test resuming: {len(names)}"

    # 2. the state a kill between one shard's two format commits leaves: zarr in, wds not
    half = next(s for s in first if s["format"] == "zarr")["name"]
    (store / "commits" / "wds" / f"{half}.json").unlink(missing_ok=True)
    manifest = json.loads((store / MANIFEST).read_text())  # and from a compaction, if any
    manifest["shards"] = [
        s for s in manifest["shards"] if not (s["name"] == half and s["format"] == "wds")
    ]
    (store / MANIFEST).write_text(json.dumps(manifest, indent=1))
    committed = [s.path for s in Manifest.load(store).shards]
    assert any(half in p for p in committed) and not any(p == f"wds/{half}.tar" for p in committed)
    before = _fingerprints(store, committed)

    # 3. leftovers of uncommitted work: an object a killed writer was writing (its temp file),
    # a shard written but never committed, and a driver's half-written commit object
    todo = sorted({f"shard-{i:06d}" for i in range(n_shards)} - names)
    (store / "traj.zarr" / todo[0] / "theta").mkdir(parents=True, exist_ok=True)
    (store / "traj.zarr" / todo[0] / "theta" / ".zarr.json.tmp-deadbeef").write_bytes(b"junk")
    (store / "wds" / f"{todo[-1]}.tar").write_bytes(b"not a tar")
    (store / "commits" / "wds" / f".{todo[-1]}.json.tmp-0badf00d").write_bytes(b"{")

    # 4. resume on the shared cluster: complete, exactly N records, committed files untouched
    resume_mark = ray_procs.mark("resume")
    env = {**ray_procs.env(resume_mark), **driver["env"], "OMP_NUM_THREADS": "1"}
    resumed = cli(*argv, "--address", driver["address"], env=env)
    assert not ray_procs.wait_gone(resume_mark), "the resumed driver left processes behind"
    assert "removed" in resumed.stdout and "uncommitted leftovers" in resumed.stdout
    assert _fingerprints(store, committed) == before, "a committed shard file was rewritten"
    assert {s["name"] for s in _shards(store)} == {f"shard-{i:06d}" for i in range(n_shards)}
    for fmt in ("zarr", "wds"):
        ids = [r.id for r in read_records(store, fmt)]
        assert sorted(ids) == sorted(make_id("c", e, 0) for e in range(N)), fmt
    _assert_clean(store)

    # 5. once more on the complete store: says so, changes nothing
    everything = _fingerprints(store, [MANIFEST, "traj.zarr", "wds"])
    assert main(argv) == 0
    assert "is complete" in capsys.readouterr().out
    assert _fingerprints(store, [MANIFEST, "traj.zarr", "wds"]) == everything


def _shards(store: Path) -> list[dict]:
    """Committed shards as dicts (name, format, path, ...), whether compacted or not."""
    return [
        {"name": s.name, "format": s.format, "path": s.path} for s in Manifest.load(store).shards
    ]
