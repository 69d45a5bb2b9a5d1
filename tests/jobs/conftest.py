"""Job-level fixtures: real `hyperflow` commands at the `tiny` config's scale."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[2]


def hyperflow(
    *argv: str,
    check: bool = True,
    timeout: float = 600,
    env: dict | None = None,
    cwd: Path | None = None,
):
    """Run `python -m jobs.cli ARGV` in a subprocess; returns CompletedProcess (text).

    cwd: the working directory (default: the repository, which then supplies the packages);
    elsewhere PYTHONPATH points at the repository, so a test can check what lands in cwd."""
    extra = {} if cwd is None else {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *argv],
        cwd=REPO if cwd is None else cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **extra, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"hyperflow {' '.join(argv)} exited {proc.returncode}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A directory `build(dir)` fills once per test run: under pytest-xdist every worker has its
    own session fixtures, and a pretrained target or a collected store made twice costs a
    minute of the two cores. The first worker to ask builds it under a file lock in the run's
    shared base temp dir; the others wait for it and reuse it (read-only, as every session
    artifact here is). Without xdist it is built in this session's temp dir."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    out = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with FileLock(f"{out}.lock"):
        done = out / ".built"  # written last: a build that failed is redone, not reused
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory) -> Path:
    """A target pretrained for a few seconds with the tiny config (shared by the job tests)."""

    def build(root: Path) -> None:
        hyperflow("pretrain", "--config", "tiny", "--out", str(root / "target"))

    return built_once(tmp_path_factory, "tiny", build) / "target"


@pytest.fixture(scope="session")
def cli():
    """The `hyperflow` subprocess runner (a fixture: test files must not import conftest)."""
    return hyperflow


# --- Ray processes, clusters and stores of the collection tests -------------------------------
# Clean-up must end exactly the Ray processes a test started (`ray stop` ends every Ray process
# of the user, other sessions' clusters included). Each group of processes gets a marker: an env
# var that children inherit, and a private Ray temp dir whose session logs every Ray process
# keeps open. Both are needed: Ray's setproctitle ("ray::...") can overwrite the start of a
# process's /proc environ, and a driver has no file in the temp dir.
RAY_MARK = "HYPERFLOW_TEST_RAY"


class RayProcs:
    """Environments for processes that run Ray, and the clean-up of what they leave behind."""

    def __init__(self, root: Path, token: str):
        self.root = root  # short: Ray's unix sockets live under it and paths must fit 107 bytes
        self.token = token
        self.dirs: dict[str, Path] = {}  # mark -> its Ray temp dir

    @property
    def marks(self) -> list[str]:
        return list(self.dirs)

    def mark(self, name: str) -> str:
        """A fresh marker for one group of processes."""
        mark = f"{name}-{len(self.dirs)}-{os.getpid()}"
        self.dirs[mark] = self.root / str(len(self.dirs))
        return mark

    def tmp_dir(self, mark: str) -> Path:
        """The mark's Ray temp dir (for `ray start --temp-dir`)."""
        return self.dirs[mark]

    def env(self, mark: str) -> dict[str, str]:
        """Env vars for a process that starts or joins a Ray cluster."""
        return {
            RAY_MARK: mark,
            # private: `ray.init()` without an address joins the cluster named in
            # <tmp>/ray/ray_current_cluster if anyone ran `ray start` with the default temp dir
            "RAY_TMPDIR": str(self.dirs[mark]),
            # Ray 2.60 enables token auth for new local clusters and reads ~/.ray/auth_token;
            # an explicit per-session token keeps these tests off that file.
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
        }

    def pids(self, mark: str) -> list[int]:
        """Live processes carrying `mark` in their environment or holding files in its dir."""
        needle, tree = f"{RAY_MARK}={mark}".encode(), f"{self.dirs[mark]}/"
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if needle in (d / "environ").read_bytes().split(b"\0") or _holds(d, tree):
                    found.append(int(d.name))
            except OSError:  # gone, or not ours to read
                continue
        return found

    def wait_gone(self, mark: str, timeout: float = 60) -> list[int]:
        """Wait for `mark`'s processes to exit on their own; returns those still alive."""
        deadline = time.monotonic() + timeout
        while (left := self.pids(mark)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def end(self, mark: str, grace: float = 3) -> list[int]:
        """SIGTERM every process of `mark`, SIGKILL what is left after `grace` s; returns pids."""
        found = self.pids(mark)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            for pid in self.pids(mark):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if not self.wait_gone(mark, wait):
                break
        return found


def _holds(proc: Path, tree: str) -> bool:
    """Whether process dir /proc/<pid> has a file open under `tree`."""
    for fd in proc.joinpath("fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(fd).startswith(tree):
                return True
    return False


@pytest.fixture(scope="session")
def ray_procs() -> RayProcs:
    root = Path(tempfile.mkdtemp(prefix="hfr-", dir="/tmp"))
    procs = RayProcs(root, secrets.token_hex(16))
    yield procs
    leaked = {m: procs.end(m) for m in procs.marks}
    shutil.rmtree(root, ignore_errors=True)
    assert not any(leaked.values()), f"Ray processes left behind (ended now): {leaked}"


def _free_ports(n: int) -> list[int]:
    # Ports the kernel never hands out on its own: a port from bind(0) is in the ephemeral range,
    # where every Ray process's own gRPC servers and clients also take ports, and one was taken
    # between our pick and the dashboard's bind (a failed `make test`). Below that range and
    # above Ray's worker ports (10002-19999), only explicit binds like ours can clash, and random
    # picks (per process) keep two test processes apart; each is checked free, all bound at once.
    low = _ephemeral_low()
    rng = random.SystemRandom()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < n:
            port = rng.randrange(20000, low)
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port not in ports:
                ports.append(port)
        return ports


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return max(low, 21000)


@pytest.fixture(scope="session")
def free_port():
    """A loopback port nothing listens on (a function, called once per port)."""
    return lambda: _free_ports(1)[0]


@pytest.fixture(scope="session")
def ray_cluster(ray_procs) -> dict:
    """A real Ray cluster on 127.0.0.1 (`ray start --head` with the dashboard, for job submission).

    Yields address (GCS host:port, for --address), dashboard (URL, for `ray job submit`) and env
    (what a client process needs on top of ray_procs.env: the auth token and loopback switch).
    """
    port, dash, agent, metrics, client = _free_ports(5)
    mark = ray_procs.mark("head")
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **ray_procs.env(mark),
        # Ray maps 127.0.0.1 to the outward IP unless this switch is off; with it the whole
        # cluster binds and advertises loopback only (engine.pool.connect sets it for drivers)
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    cmd = [
        *(f"{venv_bin}/ray", "start", "--head", "--node-ip-address", "127.0.0.1"),
        *("--port", str(port), "--num-cpus", "2", "--disable-usage-stats"),
        *("--include-dashboard", "true", "--dashboard-host", "127.0.0.1"),
        *("--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(agent)),
        *("--metrics-export-port", str(metrics), "--ray-client-server-port", str(client)),
        *("--temp-dir", str(ray_procs.tmp_dir(mark))),
    ]
    try:
        # PATH: a job's entrypoint `python` is looked up in the PATH the cluster started with
        started = subprocess.run(
            cmd,
            env={**os.environ, **env, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert started.returncode == 0, f"ray start failed:\n{started.stdout}\n{started.stderr}"
        client_env = {k: v for k, v in env.items() if k not in (RAY_MARK, "RAY_TMPDIR")}
        yield {
            "address": f"127.0.0.1:{port}",
            "dashboard": f"http://127.0.0.1:{dash}",
            "env": client_env,
        }
    finally:
        ray_procs.end(mark)
        assert not ray_procs.pids(mark), "the test cluster's processes survived SIGKILL"


@pytest.fixture(scope="session")
def untrained_target(tmp_path_factory) -> Path:
    """An untrained default target: collection runs as fast as with a pretrained one."""

    def build(root: Path) -> None:
        import torch

        from hyperflow.model import TargetConfig, TargetModel, save_target

        torch.manual_seed(0)
        save_target(TargetModel(TargetConfig()).eval(), root / "target")

    return built_once(tmp_path_factory, "untrained", build) / "target"


@pytest.fixture(scope="session")
def local_store(untrained_target, ray_procs, tmp_path_factory) -> dict:
    """`hyperflow collect --config tiny` in local mode (a private cluster), both formats.

    Yields store (its path), argv (the command, to rerun it) and stdout.
    """

    def build(root: Path) -> None:
        mark = ray_procs.mark("local")
        proc = hyperflow(*argv_for(root), env=ray_procs.env(mark))
        left = ray_procs.wait_gone(mark)  # the private cluster must end with its driver
        ray_procs.end(mark)
        assert not left, f"local mode left Ray processes running: {left}"
        (root / "stdout.txt").write_text(proc.stdout)

    def argv_for(root: Path) -> list[str]:
        target = str(untrained_target)
        # two actors (tiny has one): the store the one-worker run is compared with; --out last,
        # tests swap it
        argv = ["collect", "--config", "tiny", "--target", target, "--workers", "2"]
        return [*argv, "--out", str(root / "store")]

    root = built_once(tmp_path_factory, "local", build)
    stdout = (root / "stdout.txt").read_text()
    return {"store": root / "store", "argv": argv_for(root), "stdout": stdout}


@pytest.fixture(scope="session")
def cluster_env(ray_cluster, ray_procs):
    """Env vars for a `hyperflow` subprocess that runs its Ray work on the session cluster
    (RAY_ADDRESS: no private cluster to start, ~10-20 s each) with one thread per process
    (a function: each call marks a fresh group of processes, for the clean-up check)."""

    def env(name: str = "client") -> dict[str, str]:
        return {
            **ray_procs.env(ray_procs.mark(name)),
            **ray_cluster["env"],
            "RAY_ADDRESS": ray_cluster["address"],
            "OMP_NUM_THREADS": "1",
        }

    return env


BASELINE_DOMAINS = ["latin", "hebrew-invert", "georgian-noise"]  # one base, two held-out


@pytest.fixture(scope="session")
def baselines(untrained_target, cluster_env, tmp_path_factory) -> dict:
    """`hyperflow evaluate --methods direct,bias_tuning` of the untrained target on 3 domains,
    2 episodes each: the results a `--reuse` or `sweep --baselines` copies (shared, read-only).

    Yields dir (the output directory), target, domains and sets (the --set flags it ran with).
    """
    sets = ["--set", f"evaluate.domains=[{','.join(BASELINE_DOMAINS)}]"]
    sets += ["--set", "evaluate.memory=false"]  # test_evaluate measures memory

    def build(root: Path) -> None:
        out = str(root / "eval")
        hyperflow(
            *("evaluate", "--config", "tiny", "--target", str(untrained_target), "--out", out),
            *("--methods", "direct,bias_tuning", "--episodes", "2", *sets),
            env=cluster_env("baselines"),
        )

    out = built_once(tmp_path_factory, "baselines", build) / "eval"
    return {"dir": out, "target": untrained_target, "domains": BASELINE_DOMAINS, "sets": sets}
