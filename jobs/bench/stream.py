"""Streaming into the trainer: the share of step time spent waiting for data, and samples/s with
1 rank and with 2 torchrun ranks (gloo on CPU).

A store of realistic synthetic records (engine.record.synthetic_records shaped like the target's
collection: P biases, T steps, way x shot support images, float16 theta) is written to a temp dir;
`hyperflow train` runs on it as a user would, with 1 and then 2 ranks, and its JSONL log (rank 0:
data_wait_s and step_s per step; DDP keeps the ranks in lock step) is summarised:

  data_wait_fraction = sum data_wait_s / sum (data_wait_s + step_s)
  samples_per_s      = world * batch_size * steps / sum (data_wait_s + step_s)

Two regimes, each with 1 and 2 ranks:
- "cached": the trainer's per-rank cache (train.cache_bytes) holds every record's frozen-encoder
  inputs, as for a store of up to ~1e5 records per rank (the quickstart's): the steady state
  after the first epoch (log field `encoded` == 0), when steps are at their fastest and the loader
  is under the most pressure;
- "uncached": train.cache_bytes=0, so every record goes through the frozen encoder at every
  visit, as at million-record scale where a rank's share does not fit its cache.
Every rank runs with one intra-op thread (torchrun's default; also the 1-rank run, so the ratio
compares processes, not thread counts).

Loader work is CPU work too: a rank's DataLoader worker reads, inflates and collates each batch
(`loader_cpu_per_batch_s`, timed in-process on the same store). With one rank it runs on a core
the rank leaves idle; with as many ranks as cores, ranks and workers share them, so per global
step the cores do 2 x (step + loader) of work and 2 ranks reach at most
`speedup_bound_loader` = 2 step / (step + loader) of one rank, before any all-reduce cost.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine.manifest import Manifest
from engine.stores import open_store, shard_name, write_shard
from engine.stream import RecordStream
from engine.synthetic import synthetic_records
from hyperflow.config import Config, load_config
from hyperflow.model import TargetModel, load_target, save_target
from hyperflow.simulator import CollectSpec

TIMED_STEPS = 100  # warm steps measured per run
MIN_RECORDS_PER_BATCH = 16  # store size: at least this many batches of records
SHARD_RECORDS = 32
TARGETS = {"data_wait_fraction_max": 0.05, "speedup_2_over_1_min": 1.6}  # DESIGN.md section 6


def write_synthetic_store(
    root: Path,
    target_dir: str | Path,
    cfg: Config,
    sizes: list[int],
    *,
    seed: int = 0,
    n_support: int | tuple[int, int] | None = None,
    fmt: str = "wds",
) -> Manifest:
    """A committed store of synthetic records, one shard per entry of `sizes`, whose manifest
    config is what `hyperflow collect` would write for `target_dir` and `cfg` (so `hyperflow
    train` accepts it). n_support: images per support set (default way x shot)."""
    model = load_target(target_dir)
    spec = CollectSpec.from_config(cfg, model, str(target_dir), ["synthetic"], "syn")
    c, s = model.cfg.channels, model.cfg.image_size
    records = synthetic_records(
        sum(sizes),
        T=spec.steps,
        P=model.layout.size,
        n_support=n_support or cfg.episodes.way * cfg.episodes.shot,
        image=(c, s, s),
        seed=seed,
        run="syn",
    )
    manifest = open_store(Path(root), {**spec.manifest_config(), "episodes": sum(sizes)}, [fmt])
    start = 0
    for k, n in enumerate(sizes):
        shard = records[start : start + n]
        encoding = (spec.theta_dtype, spec.theta_encoding)
        info = write_shard(Path(root), fmt, shard_name(k), shard, *encoding)
        manifest.commit(info)
        start += n
    return manifest


def summarize(rows: list[dict], world: int, batch_size: int) -> dict:
    """Wait share and throughput of log rows (each with data_wait_s and step_s)."""
    wait = sum(r["data_wait_s"] for r in rows)
    busy = sum(r["step_s"] for r in rows)
    return {
        "steps": len(rows),
        "data_wait_fraction": wait / (wait + busy),
        "samples_per_s": world * batch_size * len(rows) / (wait + busy),
        "data_wait_s": wait,
        "step_s": busy,
        # share of its step time rank 0 spent on a CPU (< 1: waiting for a core or for the
        # other rank's gradients)
        "step_cpu_share": sum(r.get("step_cpu_s", 0.0) for r in rows) / busy,
    }


def bench(args) -> dict:
    cfg = load_config(args.config, args.set)
    tc = cfg.train
    tmp = Path(tempfile.mkdtemp(prefix="hf-bench-stream-"))
    try:
        target = args.target
        if not target:  # an untrained backbone streams and steps at the same speed
            target = str(tmp / "target")
            save_target(TargetModel(cfg.target).eval(), Path(target))
        n = max(args.episodes, MIN_RECORDS_PER_BATCH * tc.batch_size)
        sizes = [min(SHARD_RECORDS, n - k) for k in range(0, n, SHARD_RECORDS)]
        write_synthetic_store(tmp / "store", target, cfg, sizes, fmt=tc.format)
        loader_s = _loader_cpu_per_batch(tmp / "store", tc)
        load_before = os.getloadavg()
        runs = {(w, c): _run(args, target, tmp, w, n, c) for c in (True, False) for w in (1, 2)}
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    regimes = {
        name: _compare(runs[1, cached], runs[2, cached], loader_s)
        for name, cached in (("cached", True), ("uncached", False))
    }
    return {
        "bench": "stream",
        "records": n,
        "batch_size_per_rank": tc.batch_size,
        "loader_workers": tc.loader_workers,
        "theta_encoding": cfg.collect.theta_encoding,  # raw: uncompressed wds theta
        "threads_per_rank": 1,
        "cpus": os.cpu_count(),
        "load_avg_1min": [load_before[0], load_after[0]],
        "loader_cpu_per_batch_s": loader_s,
        **regimes,
        "targets": TARGETS,
        "meets": {
            name: {
                "data_wait": max(r["data_wait_fraction_1"], r["data_wait_fraction_2"])
                <= TARGETS["data_wait_fraction_max"],
                "speedup": r["speedup_2_over_1"] >= TARGETS["speedup_2_over_1_min"],
            }
            for name, r in regimes.items()
        },
    }


def _compare(one: dict, two: dict, loader_s: float) -> dict:
    """1 rank against 2 ranks (summaries of _run) in one regime."""
    step_s = one["step_s"] / one["steps"]
    return {
        "data_wait_fraction_1": one["data_wait_fraction"],
        "data_wait_fraction_2": two["data_wait_fraction"],
        "samples_per_s_1": one["samples_per_s"],
        "samples_per_s_2": two["samples_per_s"],
        "speedup_2_over_1": two["samples_per_s"] / one["samples_per_s"],
        "step_s_1": step_s,
        "speedup_bound_loader": 2 * step_s / (step_s + loader_s),
        "ranks": {"1": one, "2": two},
    }


def _loader_cpu_per_batch(store: Path, tc) -> float:
    """CPU seconds a loader worker spends per batch (read, inflate, decode, collate), with the
    one intra-op thread a DataLoader worker has (more would count idle spinning as work)."""
    stream = RecordStream(store, tc.format, 0, 1, tc.batch_size, tc.seed, tc.shuffle_buffer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        n = sum(1 for _ in stream)
        return (time.process_time() - start) / n
    finally:
        torch.set_num_threads(threads)


def _run(args, target: str, tmp: Path, world: int, records: int, cached: bool) -> dict:
    """`hyperflow train` on tmp/store with `world` ranks; summary of its timed steps."""
    cfg = load_config(args.config, args.set)
    epoch = math.ceil(math.ceil(records / world) / cfg.train.batch_size)  # steps per epoch
    out = tmp / f"train-{world}-{'cached' if cached else 'uncached'}"
    sets = [x for kv in args.set for x in ("--set", kv)]
    # cached: one epoch fills the cache, then TIMED_STEPS warm steps; uncached: the first step
    # (worker start-up) is dropped
    sets += ["--set", f"train.steps={(epoch if cached else 1) + TIMED_STEPS}"]
    sets += [] if cached else ["--set", "train.cache_bytes=0"]
    sets += ["--set", "train.checkpoint_every=1000000000"]  # only the final one
    cmd = [sys.executable, "-m", "jobs.cli", "train", "--config", args.config, *sets]
    cmd += ["--store", str(tmp / "store"), "--target", target, "--out", str(out)]
    cmd += ["--nproc", str(world)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["world"] == world for r in rows), f"log of the {world}-rank run has other worlds"
    if cached:
        rows = [r for r in rows[epoch:] if r["encoded"] == 0]
        assert len(rows) >= TIMED_STEPS // 2, f"only {len(rows)} warm steps: the cache is too small"
    else:
        rows = rows[1:]
        assert all(r["encoded"] > 0 for r in rows), "an uncached run skipped the encoder"
    return summarize(rows, world, cfg.train.batch_size)
