"""`hyperflow evaluate --reuse PREVIOUS`: baselines computed once, for the same episodes only.

The previous evaluation is the session's `baselines` (direct and bias_tuning, shared with
test_sweep); refusals run `hyperflow evaluate` in this process and must exit 2 before Ray starts.
"""

from __future__ import annotations

import json

import jobs.evaluate
from jobs.cli import main


def _argv(baselines, out, methods, *extra) -> list[str]:
    argv = ["evaluate", "--config", "tiny", "--target", str(baselines["target"]), "--out", str(out)]
    return [*argv, "--methods", methods, "--episodes", "2", *baselines["sets"], *extra]


def _refused(argv: list[str], monkeypatch, capsys) -> str:
    """Run `hyperflow ARGV` in this process: exit 2 before Ray starts. Returns stderr."""

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the input was refused")

    monkeypatch.setattr(jobs.evaluate, "connect", no_ray)
    assert main(argv) == 2
    return capsys.readouterr().err


def test_reused_baselines_are_copied_not_rerun(
    cli, baselines, cluster_env, tmp_path, monkeypatch, capsys
):
    first = baselines["dir"]
    before = json.loads((first / "results.json").read_text())
    assert list(before["methods"]) == ["direct", "bias_tuning"]

    second = tmp_path / "second"
    methods = "direct,bias_tuning,head_tuning"
    proc = cli(*_argv(baselines, second, methods, "--reuse", str(first)), env=cluster_env())
    after = json.loads((second / "results.json").read_text())
    assert "reusing direct, bias_tuning" in proc.stdout
    # copied whole (time and memory included): a re-run would measure other seconds
    for m in ("direct", "bias_tuning"):
        assert after["methods"][m] == before["methods"][m], m
    # the method it did not have was run, on every domain
    assert set(after["methods"]["head_tuning"]["acc"]) == set(baselines["domains"])
    assert list(after["methods"]) == ["direct", "bias_tuning", "head_tuning"]
    # the per-episode rows came along: paired intervals against the copied baselines
    assert after["methods"]["head_tuning"]["episodes"] and after["paired"]["methods"]["head_tuning"]

    # rows of other episodes (here: one episode's seed changed) are refused, naming the method
    tampered = json.loads((first / "results.json").read_text())
    tampered["methods"]["bias_tuning"]["episodes"][0]["seed"] += 1
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    third = tmp_path / "third"
    extra = ("--reuse", str(tmp_path / "tampered.json"))
    err = _refused(_argv(baselines, third, methods, *extra), monkeypatch, capsys)
    assert "per-episode rows of bias_tuning" in err
    assert not (third / "results.json").exists()


def test_reuse_of_other_episodes_is_refused_naming_the_field(
    baselines, tmp_path, monkeypatch, capsys
):
    other = tmp_path / "other"
    extra = ("--reuse", str(baselines["dir"]), "--set", "evaluate.seed=5")
    err = _refused(_argv(baselines, other, "direct", *extra), monkeypatch, capsys)
    assert "seed=1000" in err and "seed=5" in err
    assert not (other / "results.json").exists()
