"""`hyperflow bench drift-scale`: a drift network of >= 50M parameters trained for 100 optimizer
steps by 2 gloo ranks from a streamed store, with gradient accumulation and bf16 autocast, then
killed after a checkpoint and resumed to the same result.

What runs is `hyperflow train` as a user runs it (torchrun, streamed WebDataset shards of a
synthetic store shaped like the config's collection, an untrained target of the config's
backbone unless --target is given):

1. uninterrupted: STEPS steps, checkpoints every STEPS / 2;
2. interrupted: the same command into another directory, SIGKILLed (launcher, ranks and loader
   workers) as soon as its first checkpoint is complete, then `--resume`d to STEPS.

The resumed run must log the same losses and end with the same weights as the uninterrupted
one (`resume.max_weight_diff`, exactly 0 when every float op repeats). `step_s` is rank 0's
median time per optimizer step (forward and backward of every micro-batch, gradient all-reduce,
AdamW); `peak_rss_mb` each rank's resident high-water mark, as the trainer prints it.
`loss_first_last_10` (mean training loss of the first and last 10 steps) says nothing about
learning here: synthetic trajectories do not depend on their support sets, and the config's
theta_noise adds a fresh off-path term to every step's loss. That training lowers the loss is
tested on small runs (tests/jobs/test_train_step.py, test_train_scale.py).
Defaults (--set overrides them, e.g. --set train.depth=4): layer_dim 256, width 1024, depth 8,
62M parameters at P=1040; 8 records per micro-batch, 2 micro-batches per step and rank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from hyperflow.bias import BiasLayout
from hyperflow.config import load_config
from hyperflow.model import TargetModel, save_target
from jobs.bench.stream import write_synthetic_store

STEPS, RANKS = 100, 2
RECORDS, SHARD_RECORDS = 256, 32
SETS = [
    "train.layer_dim=256",
    "train.width=1024",
    "train.depth=8",
    "train.batch_size=8",
    "train.grad_accum=2",
    "train.mixed_precision=bf16",
    "train.warmup=10",
    "train.loader_workers=1",
    f"train.steps={STEPS}",
    f"train.checkpoint_every={STEPS // 2}",
]


def bench(args) -> dict:
    sets = [*SETS, *args.set]  # the user's overrides last: they win
    cfg = load_config(args.config, sets)
    tmp = Path(tempfile.mkdtemp(prefix="hf-bench-drift-scale-"))
    try:
        target = args.target
        if not target:  # an untrained backbone trains the drift at the same cost
            target = str(tmp / "target")
            save_target(TargetModel(cfg.target).eval(), Path(target))
        sizes = [min(SHARD_RECORDS, RECORDS - k) for k in range(0, RECORDS, SHARD_RECORDS)]
        write_synthetic_store(tmp / "store", target, cfg, sizes, fmt=cfg.train.format)
        cmd = [sys.executable, "-m", "jobs.cli", "train", "--config", args.config]
        cmd += [x for kv in sets for x in ("--set", kv)]
        cmd += ["--store", str(tmp / "store"), "--target", target, "--nproc", str(RANKS)]
        load_before = os.getloadavg()
        whole, whole_s = _run([*cmd, "--out", str(tmp / "whole")])
        killed_at, kill_s = _run_until_checkpoint([*cmd, "--out", str(tmp / "resumed")], tmp)
        resumed, resume_s = _run([*cmd, "--out", str(tmp / "resumed"), "--resume"])
        load_after = os.getloadavg()
        seconds, load = [whole_s, kill_s, resume_s], [load_before[0], load_after[0]]
        return _report(cfg, tmp, whole, resumed, killed_at, seconds, load)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(cmd: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr, time.perf_counter() - start


def _run_until_checkpoint(cmd: list[str], tmp: Path) -> tuple[int, float]:
    """Start `cmd`, SIGKILL its whole process group once a checkpoint is complete; returns the
    newest complete checkpoint's step."""
    out = Path(cmd[cmd.index("--out") + 1])
    start = time.perf_counter()
    with open(tmp / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=log, start_new_session=True)
        try:
            while not list((out / "checkpoints").glob("step-*/progress.json")):
                if proc.poll() is not None:
                    raise RuntimeError(f"the run to interrupt exited {proc.returncode} first")
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = sorted(p.parent.name for p in (out / "checkpoints").glob("step-*/progress.json"))
    return int(done[-1].split("-")[1]), time.perf_counter() - start


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default per rank, made explicit


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _report(cfg, tmp: Path, whole_log, resumed_log, killed_at, seconds, load) -> dict:
    tc = cfg.train
    whole, resumed = _rows(tmp / "whole"), _rows(tmp / "resumed")
    a = load_file(str(tmp / "whole" / "drift.safetensors"))
    b = load_file(str(tmp / "resumed" / "drift.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a) if a.keys() == b.keys() else None
    same_losses = [r["loss"] for r in whole] == [r["loss"] for r in resumed]
    ckpt = tmp / "whole" / "checkpoints" / f"step-{tc.steps:08d}"
    meta = json.loads((tmp / "whole" / "drift.json").read_text())
    return {
        "bench": "drift-scale",
        "params": whole[0]["params"],
        "dims": {k: meta["config"][k] for k in ("layer_dim", "width", "depth", "task_dim")},
        "P": BiasLayout.from_json(meta["layout"]).size,
        "ranks": RANKS,
        "grad_accum": tc.grad_accum,
        "batch_per_rank": tc.batch_size,
        "records_per_step": RANKS * tc.grad_accum * tc.batch_size,
        "mixed_precision": tc.mixed_precision,
        "steps": len(whole),
        "store_records": RECORDS,
        "step_s": statistics.median(r["step_s"] for r in whole),
        "data_wait_s": statistics.median(r["data_wait_s"] for r in whole),
        "loss_first_last_10": [
            statistics.mean(r["loss"] for r in whole[:10]),
            statistics.mean(r["loss"] for r in whole[-10:]),
        ],
        "peak_rss_mb": _peak_rss(whole_log),
        "checkpoint_mb": round(sum(f.stat().st_size for f in ckpt.iterdir()) / 2**20),
        "wall_s": {"whole": seconds[0], "until_kill": seconds[1], "resume": seconds[2]},
        "resume": {
            "killed_after_checkpoint": killed_at,
            "resumed_steps": len(resumed) - killed_at,
            "losses_equal": same_losses,
            "max_weight_diff": diff,
            "ok": same_losses and diff == 0.0,
            "peak_rss_mb": _peak_rss(resumed_log),
        },
        "cpus": os.cpu_count(),
        "load_avg_1min": load,
    }


def _peak_rss(log: str) -> dict[str, int]:
    return {r: int(mb) for r, mb in re.findall(r"rank (\d+): peak RSS (\d+) MB", log)}
