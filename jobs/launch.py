"""Several processes for `hyperflow pretrain` and `hyperflow train`: torchrun, started for you.

`--nproc N` runs N ranks on this machine (gloo on CPU, NCCL on GPUs). Several machines join one
run with `--nnodes M --rdzv-endpoint HOST:PORT`: start the same command on each of the M nodes;
torchrun's c10d rendezvous, hosted at HOST:PORT (the first node whose address it is, or any
reachable one), numbers the nodes and ranks. The command re-executes itself under torchrun without
these options; LOCAL_RANK then tells it that it is one of the ranks.

When the endpoint is a loopback address every node is on this machine (the tests): torchrun is
then told to advertise 127.0.0.1 as well, so that no rank reaches for the machine's outward
address.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from hyperflow.errors import UserError
from jobs.common import positive_int

# option -> whether it takes a value; stripped from the command the ranks run
_LAUNCH_OPTIONS = {"--nproc": True, "--nnodes": True, "--rdzv-endpoint": True, "--rdzv-id": True}


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc", type=positive_int, default=1, help="processes on this node (torchrun ranks)"
    )
    p.add_argument(
        "--nnodes",
        type=positive_int,
        default=1,
        help="nodes in the run: start the same command on each, with the same --rdzv-endpoint",
    )
    p.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="where the nodes meet (torchrun c10d rendezvous); needed with --nnodes > 1",
    )
    p.add_argument("--rdzv-id", default="hyperflow", help="run id shared by the nodes of one run")


def world_size(args: argparse.Namespace) -> int:
    return args.nproc * args.nnodes


def is_rank() -> bool:
    """Whether this process is one of torchrun's ranks."""
    return "LOCAL_RANK" in os.environ


def needs_launch(args: argparse.Namespace) -> bool:
    """Whether this command must re-run itself under torchrun (checks the launch options)."""
    if args.nnodes > 1:
        host, sep, port = (args.rdzv_endpoint or "").rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UserError(
                f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT (where the nodes meet), "
                f"got {args.rdzv_endpoint!r}"
            )
    return world_size(args) > 1 and not is_rank()


def relaunch(args: argparse.Namespace) -> int:
    """Re-run this command under torchrun; returns its exit code. args.argv: the command line."""
    argv = _strip_launch_options(args.argv)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}"]
    if args.nnodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [f"--nnodes={args.nnodes}", "--rdzv-backend=c10d"]
        cmd += [f"--rdzv-endpoint={args.rdzv_endpoint}", f"--rdzv-id={args.rdzv_id}"]
        if _is_loopback(args.rdzv_endpoint.rpartition(":")[0]):
            cmd += ["--local-addr=127.0.0.1"]
    cmd += ["-m", "jobs.cli", *argv]
    print(f"launching {world_size(args)} ranks: torchrun {' '.join(cmd[3:])}", flush=True)
    # torchrun runs in its own session so that a terminal's Ctrl-C reaches it once, through us;
    # SIGTERM/SIGINT/SIGHUP are passed on and we wait for it to stop its ranks, instead of dying
    # first and leaving it and the ranks behind
    env = dict(os.environ)
    if args.nnodes > 1 and _is_loopback(args.rdzv_endpoint.rpartition(":")[0]):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pairs on loopback too
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, lambda signum, _: proc.send_signal(signum)) for s in forwarded}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _strip_launch_options(argv: list[str]) -> list[str]:
    # torchrun's own argparse would also reject "--nproc" anywhere in its argv, as an ambiguous
    # abbreviation of --nproc-per-node
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in _LAUNCH_OPTIONS:
            skip = "=" not in a and _LAUNCH_OPTIONS[name]
            continue
        out.append(a)
    return out


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")
