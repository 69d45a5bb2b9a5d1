"""`hyperflow sweep`: a grid of drift networks on nested subsets, evaluated on the same episodes
with baselines copied, reported as a table and a PNG, and continued where it stopped.

The baselines are the session's (`baselines`: direct and bias_tuning of the untrained target, the
one the store was collected with); each point's evaluation runs on the session's Ray cluster.
"""

from __future__ import annotations

import json

import jobs.sweep
from jobs.cli import main

# fewer drift steps than tiny's 40 and only the reported solver step count: what is tested is
# the grid, the copies and the report, not what the drift networks learn
SETS = ["--set", "train.steps=10", "--set", "evaluate.solver_steps=[5]"]
SETS += ["--set", "evaluate.memory=false"]  # test_evaluate measures memory


def _argv(store, target, baselines, out, *extra) -> list[str]:
    argv = ["sweep", "--config", "tiny", "--store", str(store), "--target", str(target)]
    argv += ["--baselines", str(baselines), "--out", str(out), "--steps", "5", "--sizes", "small"]
    return [*argv, *SETS, *extra]


def test_a_sweep_trains_each_point_reports_it_and_resumes(
    cli, local_store, untrained_target, baselines, cluster_env, tmp_path, capfd
):
    store, base = local_store["store"], baselines["dir"]
    assert baselines["target"] == untrained_target  # the target the store was collected with
    out = tmp_path / "sweep"
    argv = _argv(store, untrained_target, base, out, "--records", "8,16", "--scale-steps")
    proc = cli(*argv, env=cluster_env("sweep"))
    rows = json.loads(proc.stdout)["rows"]
    assert [(r["size"], r["records"]) for r in rows] == [("small", 8), ("small", 16)]
    # nested subsets: each point trained on exactly its share of the store, and with
    # --scale-steps for as many passes over it as the smallest point (train.steps=10 at 8)
    for n, steps in ((8, 10), (16, 20)):
        drift = json.loads((out / f"small-{n}" / "drift.json").read_text())
        assert drift["extra"]["train_config"]["max_records"] == n
        assert drift["extra"]["train_config"]["steps"] == steps
        log = (out / f"small-{n}" / "train_log.jsonl").read_text().splitlines()
        assert json.loads(log[-1])["step"] == steps, "the steps were trained, not just recorded"
        results = json.loads((out / f"small-{n}" / "eval" / "results.json").read_text())
        assert (
            results["methods"]["bias_tuning"]
            == json.loads((base / "results.json").read_text())["methods"]["bias_tuning"]
        ), "the baselines are copied, not re-run"
        assert "hyperflow_cubic@5" in results["methods"]
    # the collected families come from the store; hebrew-invert (never collected) is apart
    assert json.loads(proc.stdout)["collected_shifts"]
    table = (out / "scaling.md").read_text()
    assert "| small |" in table and "| 8 |" in table and "| 16 |" in table
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    # docs-style points: each recovery with its paired interval over the baselines' episodes
    points = json.loads((out / "scaling.json").read_text())["points"]
    cells = [(p["size"], p["records"], p["seed"], p["train_steps"]) for p in points]
    assert cells == [("small", 8, 0, 10), ("small", 16, 0, 20)]
    for p in points:
        assert p["store"] == str(store)
        for key in ("heldout_recovery", "collected_recovery", "never_collected_recovery"):
            assert p[key] is None or set(p[key]) == {"mean", "lo", "hi"}, key
    assert all(p["heldout_recovery"] is not None for p in points), "the baselines have rows"
    # the change from the smallest to the largest N, paired over the same episodes (the points
    # share one copy of the baselines, else it would be None); its values are tested in
    # tests/hyperflow/evaluation/test_paired.py: here the untrained target's bias-tuning gains
    # ~nothing, so recoveries are unbounded
    [change] = json.loads((out / "scaling.json").read_text())["changes"]
    assert (change["size"], change["from"], change["to"]) == ("small", 8, 16)
    assert set(change["heldout_recovery"]) == {"mean", "lo", "hi"}
    assert "Recovery at the largest N minus at the smallest" in (out / "scaling.md").read_text()
    assert "[sweep] hyperflow train" in proc.stderr

    # a finished point is skipped: a larger grid only runs its new points (in this process: a
    # point it ran would still be a `hyperflow` subprocess, its output on this process's fds)
    (out / "scaling.md").unlink()
    capfd.readouterr()
    assert main(argv) == 0
    again = capfd.readouterr()
    assert "[sweep] hyperflow" not in again.err
    assert json.loads(again.out)["rows"] == rows
    assert (out / "scaling.md").read_text() == table


def test_bad_grids_are_refused_before_anything_runs(
    local_store, untrained_target, tmp_path, monkeypatch, capsys
):
    # in-process: no interpreter start-up per case; nothing may run, not even one point
    def no_run(argv, tag):
        raise AssertionError(f"`hyperflow {argv[0]}` ran for a refused grid")

    monkeypatch.setattr(jobs.sweep, "run_hyperflow", no_run)
    store, base = local_store["store"], tmp_path / "none"
    out = tmp_path / "sweep"

    def refused(*extra) -> str:
        assert main(_argv(store, untrained_target, base, out, *extra)) == 2
        return capsys.readouterr().err

    assert "1000000" in refused("--records", "8,1000000")
    assert "'huge'" in refused("--sizes", "huge")
    assert "--baselines" in refused("--records", "8")
    assert not out.exists(), "nothing is written for a refused grid"
