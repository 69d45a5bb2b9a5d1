"""The real cluster path: `ray job submit` of `hyperflow collect` to a `ray start` cluster.

The session fixture `ray_cluster` starts the head on 127.0.0.1 (dashboard included, token auth,
venv on PATH); cluster/README.md documents the same commands.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from engine.record import record_diff
from engine.stores import read_records

REPO = Path(__file__).resolve().parents[2]
# the working dir is zipped and uploaded to the cluster: only the code, never the venv or runs
EXCLUDES = [".venv/", "runs/", ".git/", ".pytest_cache/", ".ruff_cache/", "__pycache__/"]
EXCLUDES += ["*.egg-info/", ".cache/"]


def test_job_submit_writes_the_store_local_mode_writes(
    ray_cluster, ray_procs, local_store, untrained_target, tmp_path
):
    out = tmp_path / "store"  # absolute: the job runs in the unpacked working dir
    collect = [
        *("python", "-m", "jobs.cli", "collect", "--config", "tiny"),
        *("--target", str(untrained_target), "--out", str(out)),
        *("--address", ray_cluster["address"]),
    ]
    # first a probe of what runs the entrypoint: the cluster's PATH python, the uploaded code.
    # `ray job submit` quotes each argument, so a compound command goes through `sh -c`.
    probe = "python -c 'import sys, jobs.cli; print(\"PROBE\", sys.executable, jobs.cli.__file__)'"
    cmd = [
        *(str(Path(sys.executable).parent / "ray"), "job", "submit"),
        *("--address", ray_cluster["dashboard"], "--working-dir", str(REPO)),
        *("--runtime-env-json", json.dumps({"excludes": EXCLUDES})),
        *("--", "sh", "-c", f"{probe} && {shlex.join(collect)}"),
    ]
    mark = ray_procs.mark("submit")
    proc = subprocess.run(
        cmd,
        env={**os.environ, **ray_procs.env(mark), **ray_cluster["env"]},
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ray job submit failed:\n{logs[-4000:]}"

    probe_line = next(line for line in logs.splitlines() if line.startswith("PROBE "))
    _, python, cli_file = probe_line.split()
    assert Path(python).parent == Path(sys.executable).parent, f"job python {python}"
    assert "working_dir_files" in cli_file and not cli_file.startswith(str(REPO)), cli_file
    assert "collected 16 trajectories" in logs

    local = {r.id: r for r in read_records(local_store["store"], "zarr")}
    for fmt in ("zarr", "wds"):
        job = {r.id: r for r in read_records(out, fmt)}
        assert sorted(job) == sorted(local), f"{fmt}: ids differ from local mode"
        for rid, rec in job.items():
            assert record_diff(rec, local[rid]) == [], f"{fmt} {rid} differs from local mode"
