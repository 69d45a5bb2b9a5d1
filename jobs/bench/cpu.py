"""Where a command's CPU time goes: `hyperflow bench cpu --run 'make test' --json`.

Runs the command (through /bin/sh) and, until it exits, samples every process on the machine every
--interval seconds: user + system time from /proc/PID/stat, keyed by (pid, start time) so a reused
pid is a new process. Processes are grouped by kind: a `hyperflow` subcommand (torchrun ranks
included: they run `jobs.cli` too), torchrun's launcher, a Ray actor by its class (from the
process title; the last one other than ray::IDLE: a worker renames itself when it takes work),
a Ray daemon, a pytest worker, a kernel thread (no command line), else the program and its
module or script.

A process alive before the command started counts only what it used since (the kernel's own
threads, daemons of other sessions); one that lives shorter than an interval is missed, so the
total is a lower bound. `busy_share` is the machine's from /proc/stat over the run (1.0: every
core busy all along): near 1, the command's wall time is its CPU time over the cores, and only
less CPU work makes it shorter.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from hyperflow.errors import UserError

_TICK = os.sysconf("SC_CLK_TCK")
# substrings of a Ray daemon's command line -> its name in the report
_RAY_DAEMONS = {
    "gcs_server": "gcs_server",
    "/raylet": "raylet",
    "dashboard/dashboard.py": "dashboard",
    "ray-dashboard-": "dashboard module",
    "dashboard.subprocesses": "dashboard module",
    "log_monitor.py": "log_monitor",
    "dashboard/agent.py": "dashboard agent",
    "runtime_env/agent": "runtime env agent",
    "autoscaler/_private/monitor.py": "monitor",
}


def kind(cmdline: str, comm: str, kernel: bool = False) -> str:
    """The group a process's CPU time is reported under (see the module docstring); kernel:
    whether it is a kernel thread (a child of kthreadd, pid 2)."""
    if kernel:
        return f"kernel {comm.split('/')[0]}"  # kworker/1:1H-kblockd -> kworker
    if not cmdline:  # exited, not yet reaped: its command line is gone
        return f"{comm} (exited)"
    if cmdline.startswith("ray::"):
        return cmdline.split()[0].split(".")[0]  # ray::EvalWorker.run -> ray::EvalWorker
    for needle, name in _RAY_DAEMONS.items():
        if needle in cmdline:
            return f"ray daemon {name}"
    argv = cmdline.split()
    if "torch.distributed.run" in argv or Path(argv[0]).name == "torchrun":
        return "torchrun"
    if "jobs.cli" in argv:
        rest = argv[argv.index("jobs.cli") + 1 :]
        return f"hyperflow {rest[0] if rest else ''}".strip()
    if "pytest" in (Path(argv[0]).name, *argv[1:3]) or "exec(eval(sys.stdin" in cmdline:
        return "pytest worker"  # the second: an xdist worker, started by execnet
    program = Path(argv[0]).name
    if len(argv) > 2 and argv[1] in ("-m", "-c"):
        return f"{program} {argv[1]} {argv[2][:40] if argv[1] == '-m' else ''}".strip()
    if len(argv) > 1 and program.startswith("python"):
        return f"{program} {Path(argv[1]).name}"
    return program


def _read(pid: str) -> tuple[int, float, str, str, bool] | None:
    """(start time in ticks, CPU seconds, comm, command line, kernel thread) of a process, else
    None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
    cpu = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    kernel = fields[1] in ("0", "2") and not cmdline  # kthreadd and its children
    return int(fields[19]), cpu, comm, cmdline, kernel


def _busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values[:8]) - idle, sum(values[:8])


def bench(args) -> dict:
    if not args.run:
        raise UserError("bench cpu needs --run 'COMMAND' (the command to profile)")
    if args.interval <= 0:
        raise UserError(f"--interval must be > 0 seconds, got {args.interval}")
    me = str(os.getpid())
    # processes already running: only their CPU time from here on counts
    base = {(p, r[0]): r[1] for p in os.listdir("/proc") if p.isdigit() and (r := _read(p))}
    procs: dict[tuple[str, int], list] = {}  # (pid, start) -> [kind, cpu seconds at last sight]
    busy0, total0 = _busy()
    start = time.monotonic()
    child = subprocess.Popen(args.run, shell=True)
    while True:
        done = child.poll() is not None
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == me or not (r := _read(pid)):
                continue
            key = (pid, r[0])
            cpu = r[1] - base.get(key, 0.0)
            k = kind(r[3], r[2], r[4])
            if key not in procs:
                procs[key] = [k, cpu]
            else:  # keep a Ray worker's working title, and a command line once it has exited
                keep = k == "ray::IDLE" or k.endswith(" (exited)")
                procs[key] = [procs[key][0] if keep else k, cpu]
        if done:
            break
        time.sleep(args.interval)
    wall = time.monotonic() - start
    busy1, total1 = _busy()
    per_kind: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for k, cpu in procs.values():
        if cpu > 0:
            per_kind[k][0] += cpu
            per_kind[k][1] += 1
    rows = sorted(per_kind.items(), key=lambda kv: -kv[1][0])
    total = sum(cpu for cpu, _ in per_kind.values())
    result = {
        "bench": "cpu",
        "command": args.run,  # as given: sh -c runs it, not a split of it
        "exit_code": child.returncode,
        "wall_s": wall,
        "cores": os.cpu_count(),
        "busy_share": (busy1 - busy0) / max(1, total1 - total0),
        "cpu_s": total,
        "interval_s": args.interval,
        "kinds": [
            {"kind": k, "cpu_s": round(cpu, 2), "share": cpu / total, "processes": n}
            for k, (cpu, n) in rows
        ],
    }
    if child.returncode != 0:  # the figures still tell where the time went
        print(json.dumps(result))
        raise UserError(f"--run {args.run!r} exited {child.returncode}")
    return result
