"""`hyperflow bench cpu`: CPU seconds of a command's processes, grouped by kind."""

import json
import sys

import pytest

from jobs.bench.cpu import kind

BURN = """import sys, time
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
time.sleep(0.5)  # alive for a few more samples after its last CPU tick
"""


def test_two_burners_are_one_kind_with_their_cpu_seconds(cli, tmp_path):
    script = tmp_path / "burner.py"
    script.write_text(BURN)
    burn = f"{sys.executable} {script} 1.0"
    cmd = f"{burn} & {burn} & wait; {sys.executable} -c 'import time; time.sleep(0.3)'"
    r = json.loads(cli("bench", "cpu", "--run", cmd, "--interval", "0.1", "--json").stdout)
    assert r["exit_code"] == 0 and r["wall_s"] >= 1.0
    assert 0 < r["busy_share"] <= 1
    kinds = {k["kind"]: k for k in r["kinds"]}
    burners = kinds[f"{sys.executable.rsplit('/', 1)[-1]} burner.py"]
    assert burners["processes"] == 2
    # 1.0 s of CPU each, however busy the machine (process time, not wall time)
    assert 1.9 <= burners["cpu_s"] <= 2.3, burners
    assert r["cpu_s"] >= burners["cpu_s"]


def test_a_failing_command_exits_2_naming_its_exit_code(cli):
    proc = cli("bench", "cpu", "--run", "exit 3", "--interval", "0.1", check=False)
    assert proc.returncode == 2 and "exited 3" in proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["exit_code"] == 3  # the figures still print


@pytest.mark.parametrize(
    "cmdline, comm, expected",
    [
        ("", "python", "python (exited)"),
        ("ray::EvalWorker.run", "ray::EvalWorker", "ray::EvalWorker"),
        ("/v/bin/python -m jobs.cli train --config tiny", "python", "hyperflow train"),
        ("/v/bin/python -m torch.distributed.run -m jobs.cli train", "python", "torchrun"),
        ("/v/ray/core/src/ray/gcs/gcs_server --log_dir=x", "gcs_server", "ray daemon gcs_server"),
        ("/v/python -u -c import sys;exec(eval(sys.stdin.readline()))", "python", "pytest worker"),
        ("/usr/bin/make test", "make", "make"),
        ("/v/bin/python -m pytest -n 2 tests", "python", "pytest worker"),
        ("/v/bin/python /tmp/pytest-of-root/x/burner.py", "python", "python burner.py"),
        ("/v/bin/python3 /tmp/burner.py 1.0", "python3", "python3 burner.py"),
    ],
)
def test_process_kinds(cmdline, comm, expected):
    assert kind(cmdline, comm) == expected


def test_kernel_threads_are_grouped_by_name():
    assert kind("", "kworker/1:1H-kblockd", kernel=True) == "kernel kworker"
