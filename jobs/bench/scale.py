"""The engine at scale: `hyperflow bench scale --records N [--out URL] --json`.

The synthetic simulator (engine.synthetic; small P, 4x4 support images) collects N records in
shards of 100 into a store on local disk (default: a temp dir, removed afterwards) or at --out
(any URL). The collection driver runs as its own process (jobs/bench/scale_driver.py) and is
SIGKILLed once 95% of the shards are committed, then restarted to finish. Reported:

  commit_s_first_10pct, commit_s_last_10pct   driver seconds per shard commit, mean over the
                                              first and last 10% of shards (their ratio: <= 1.5)
  shards, commits_timed                       shards in the manifest; commits whose time the bench
                                              saw (fewer if one landed as the kill was sent)
  driver_peak_rss_bytes                       max over both driver processes (VmHWM)
  manifest_bytes                              root manifest.json at the end
  resume_first_commit_s                       restart to its first new commit (process start,
                                              imports, Ray start and store scan included)
  verify_mb_per_s, sha256_mb_per_s            `inspect --verify` over the whole store, and this
                                              machine's hashlib sha256 on the same bytes in memory
  verify_warm_mb_per_s                        a second verify right after the first: the objects
                                              are then in the page cache (the first pass may read
                                              some from disk)
  stream_startup_s, stream_peak_rss_bytes     per trainer rank (2 ranks, opened concurrently):
                                              RecordStream to its first batch
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from engine.checksum import verify_shards
from engine.manifest import MANIFEST, Manifest
from engine.storage import check_access, location
from jobs.bench.scale_driver import peak_rss

SHARD_RECORDS = 100
KILL_AT = 0.95  # share of shards committed when the driver is killed
_MARK = "HYPERFLOW_BENCH_SCALE"


def _driver(store: str, records: int, fmt: str, workers: int, mark: str, *extra: str):
    argv = [sys.executable, "-m", "jobs.bench.scale_driver", store, "--records", str(records)]
    argv += ["--shard-records", str(SHARD_RECORDS), "--workers", str(workers), "--format", fmt]
    env = {**os.environ, _MARK: mark, "RAY_TMPDIR": _ray_dir(mark)}
    return subprocess.Popen(
        [*argv, *extra], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )


def _ray_dir(mark: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"hfs-{mark}")


def _end_marked(mark: str) -> None:
    """SIGKILL what is left of a killed driver's private Ray cluster: processes that inherited
    its mark, or hold files in its Ray temp dir (Ray's process titles can hide the former)."""
    needle, tree = f"{_MARK}={mark}".encode(), _ray_dir(mark) + "/"
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            held = any(os.readlink(fd).startswith(tree) for fd in (d / "fd").iterdir())
            if held or needle in (d / "environ").read_bytes().split(b"\0"):
                os.kill(int(d.name), signal.SIGKILL)


def _events(proc):
    for line in proc.stdout:
        if line.startswith("{"):
            yield json.loads(line)


def _collect_with_a_kill(store: str, records: int, fmt: str, workers: int) -> dict:
    commits, rss = [], 0
    mark = uuid.uuid4().hex[:8]
    proc = _driver(store, records, fmt, workers, mark)
    shards = None
    try:
        for e in _events(proc):
            shards = e.get("shards", shards)
            if e["event"] == "commit":
                commits.append(e["seconds"])
                if len(commits) % max(1, shards // 100) == 0:
                    print(f"\rcommitted {len(commits)}/{shards}", end="", file=sys.stderr)
                # a few shards short of the end at least: in flight ones may land before the kill
                if len(commits) >= min(KILL_AT * shards, shards - 3):
                    rss = peak_rss(proc.pid)
                    break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1)
        _end_marked(mark)
    killed_after = len(commits)
    mark = uuid.uuid4().hex[:8]
    start = time.time()
    proc = _driver(store, records, fmt, workers, mark)
    first = None
    for e in _events(proc):
        if e["event"] == "commit":
            first = first or e["t"] - start
            commits.append(e["seconds"])
        if e["event"] == "done":
            rss = max(rss, e["peak_rss"])
    assert proc.wait() == 0, "the restarted driver failed"
    _end_marked(mark)
    print(file=sys.stderr)
    return {"commits": commits, "killed_after": killed_after, "resume": first, "rss": rss}


def _sha256_mb_per_s(loc, keys: list[str], budget: int = 256 << 20) -> float:
    blobs, size = [], 0
    for k in keys:
        blobs.append(loc.read_bytes(k))
        size += len(blobs[-1])
        if size >= budget:
            break
    start = time.perf_counter()
    for b in blobs:
        hashlib.sha256(b).digest()
    return size / 1e6 / (time.perf_counter() - start)


def bench(args) -> dict:
    records, fmt, workers = args.records, args.format or "both", 2
    tmp = None
    if args.out:
        store = args.out
        check_access(location(store), write=True, what="--out")  # exit 2 before any work
    else:
        tmp = tempfile.mkdtemp(prefix="hf-bench-scale-")
        store = os.path.join(tmp, "store")
    try:
        run = _collect_with_a_kill(store, records, fmt, workers)
        loc = location(store)
        m = Manifest.load(loc)
        n = len(run["commits"])
        tenth = max(1, n // 10)
        start = time.perf_counter()
        problems = verify_shards(loc, m.shards)
        verify_s = time.perf_counter() - start
        start = time.perf_counter()  # again, now that the first pass read every object
        verify_shards(loc, m.shards)
        warm_s = time.perf_counter() - start
        total = sum(s.bytes for s in m.shards)
        sha = _sha256_mb_per_s(loc, [k for s in m.shards for k in s.objects])
        ranks = [_driver(store, records, fmt, 1, "stream", "--stream-rank", str(r)) for r in (0, 1)]
        streams = [next(e for e in _events(p) if e["event"] == "stream") for p in ranks]
        for p in ranks:
            p.wait()
        counted = {f: sum(s.records for s in m.shards_of(f)) for f in m.formats}
        return {
            "bench": "scale",
            "store": loc.url,
            "records": records,
            "records_per_format": counted,
            # from the manifest: a shard committed after the kill signal was sent leaves no event
            "shards": len({s.name for s in m.shards}),
            "commits_timed": n,
            "killed_after_shards": run["killed_after"],
            "commit_s_first_10pct": sum(run["commits"][:tenth]) / tenth,
            "commit_s_last_10pct": sum(run["commits"][-tenth:]) / tenth,
            "commit_last_over_first": (
                sum(run["commits"][-tenth:]) / max(1e-9, sum(run["commits"][:tenth]))
            ),
            "driver_peak_rss_bytes": run["rss"],
            "manifest_bytes": loc.size(MANIFEST),
            "resume_first_commit_s": run["resume"],
            "store_bytes": total,
            "verify_ok": not any(problems.values()),
            "verify_mb_per_s": total / 1e6 / verify_s,
            "sha256_mb_per_s": sha,
            "verify_over_sha256": total / 1e6 / verify_s / sha,
            "verify_warm_mb_per_s": total / 1e6 / warm_s,
            "verify_warm_over_sha256": total / 1e6 / warm_s / sha,
            "stream_startup_s": [s["seconds"] for s in streams],
            "stream_peak_rss_bytes": [s["peak_rss"] for s in streams],
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
