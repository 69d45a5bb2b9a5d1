"""`hyperflow evaluate --reuse PREVIOUS`: baselines computed once, for the same episodes only."""

from __future__ import annotations

import json

DOMAINS = "evaluate.domains=[latin,hebrew-invert]"


def _evaluate(cli, target, out, methods, *extra, check=True):
    argv = ["evaluate", "--config", "tiny", "--target", str(target), "--out", str(out)]
    argv += ["--methods", methods, "--episodes", "2", "--set", DOMAINS, *extra]
    return cli(*argv, check=check, env={"OMP_NUM_THREADS": "1"})


def test_reused_baselines_are_copied_not_rerun(cli, tiny_target, tmp_path):
    first = tmp_path / "first"
    _evaluate(cli, tiny_target, first, "direct,bias_tuning")
    before = json.loads((first / "results.json").read_text())

    second = tmp_path / "second"
    methods = "direct,bias_tuning,head_tuning"
    proc = _evaluate(cli, tiny_target, second, methods, "--reuse", str(first))
    after = json.loads((second / "results.json").read_text())
    assert "reusing direct, bias_tuning" in proc.stdout
    # copied whole (time and memory included): a re-run would measure other seconds
    for m in ("direct", "bias_tuning"):
        assert after["methods"][m] == before["methods"][m], m
    # the method it did not have was run, on every domain
    assert set(after["methods"]["head_tuning"]["acc"]) == {"latin", "hebrew-invert"}
    assert list(after["methods"]) == ["direct", "bias_tuning", "head_tuning"]
    # the per-episode rows came along: paired intervals against the copied baselines
    assert after["methods"]["head_tuning"]["episodes"] and after["paired"]["methods"]["head_tuning"]

    # rows of other episodes (here: one episode's seed changed) are refused, naming the method
    tampered = json.loads((first / "results.json").read_text())
    tampered["methods"]["bias_tuning"]["episodes"][0]["seed"] += 1
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    third = tmp_path / "third"
    extra = ("--reuse", str(tmp_path / "tampered.json"))
    proc = _evaluate(cli, tiny_target, third, methods, *extra, check=False)
    assert proc.returncode == 2 and "per-episode rows of bias_tuning" in proc.stderr
    assert not (third / "results.json").exists()


def test_reuse_of_other_episodes_is_refused_naming_the_field(cli, tiny_target, tmp_path):
    first = tmp_path / "first"
    _evaluate(cli, tiny_target, first, "direct")
    other = tmp_path / "other"
    extra = ("--reuse", str(first), "--set", "evaluate.seed=5")
    proc = _evaluate(cli, tiny_target, other, "direct", *extra, check=False)
    assert proc.returncode == 2
    assert "seed=1000" in proc.stderr and "seed=5" in proc.stderr
    assert not (other / "results.json").exists()
