"""`hyperflow sweep`: a grid of drift networks on nested subsets and training seeds, evaluated on
the same episodes with baselines copied, reported as a table and a PNG, and continued where it
stopped.

The baselines are the session's (`baselines`: direct and bias_tuning of the untrained target, the
one the store was collected with); each point's evaluation runs on the session's Ray cluster.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

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
    argv += ["--seeds", "0,1"]
    proc = cli(*argv, env=cluster_env("sweep"))
    rows = json.loads(proc.stdout)["rows"]
    grid = [("small", n, seed) for n in (8, 16) for seed in (0, 1)]
    assert [(r["size"], r["records"], r["seed"]) for r in rows] == grid
    # nested subsets: each point trained on exactly its share of the store, and with
    # --scale-steps for as many passes over it as the smallest point (train.steps=10 at 8)
    for n, steps, seed in ((8, 10, 0), (8, 10, 1), (16, 20, 0), (16, 20, 1)):
        point = out / f"small-{n}-seed{seed}"
        drift = json.loads((point / "drift.json").read_text())
        assert drift["extra"]["train_config"]["max_records"] == n
        assert drift["extra"]["train_config"]["steps"] == steps
        assert drift["extra"]["train_config"]["seed"] == seed
        log = (point / "train_log.jsonl").read_text().splitlines()
        assert json.loads(log[-1])["step"] == steps, "the steps were trained, not just recorded"
        results = json.loads((point / "eval" / "results.json").read_text())
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
    assert cells == [("small", 8, 0, 10), ("small", 8, 1, 10), ("small", 16, 0, 20)] + [
        ("small", 16, 1, 20)
    ]
    # the seed reached the training: same records and steps, other weights
    w0, w1 = (load_file(str(out / f"small-8-seed{s}" / "drift.safetensors")) for s in (0, 1))
    assert any(not w0[k].equal(w1[k]) for k in w0), "seeds 0 and 1 trained the same weights"
    for p in points:
        assert p["store"] == str(store)
        for key in ("heldout_recovery", "collected_recovery", "never_collected_recovery"):
            assert p[key] is None or set(p[key]) == {"mean", "lo", "hi"}, key
    assert all(p["heldout_recovery"] is not None for p in points), "the baselines have rows"
    # the change from the smallest to the largest N, paired over the same episodes (the points
    # share one copy of the baselines, else it would be None); its values are tested in
    # tests/hyperflow/evaluation/test_paired.py: here the untrained target's bias-tuning gains
    # ~nothing, so recoveries are unbounded
    doc = json.loads((out / "scaling.json").read_text())
    assert [(c["size"], c["seed"], c["from"], c["to"]) for c in doc["changes"]] == [
        ("small", 0, 8, 16),
        ("small", 1, 8, 16),
    ]
    assert all(set(c["heldout_recovery"]) == {"mean", "lo", "hi"} for c in doc["changes"])
    # and over the two seeds (the values: test_seed_changes_are_the_mean_over_seeds below)
    [over] = doc["seed_changes"]
    assert (over["size"], over["seeds"], over["from"], over["to"]) == ("small", [0, 1], 8, 16)
    assert "Recovery at the largest N minus at the smallest" in (out / "scaling.md").read_text()
    assert "The same change over training seeds" in (out / "scaling.md").read_text()
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
    assert "--seeds must all be >= 0" in refused("--records", "8", "--seeds", "0,-1")
    assert "--baselines" in refused("--records", "8")
    assert not out.exists(), "nothing is written for a refused grid"


def test_seed_changes_are_the_mean_over_seeds_with_a_t_interval():
    # recovery changes of two seeds (+0.10, +0.30) for one size, one seed for another
    def change(size, seed, heldout, never):
        def iv(m):
            return None if m is None else {"mean": m, "lo": m - 0.05, "hi": m + 0.05}

        row = {"size": size, "seed": seed, "from": 300, "to": 2400}
        return (
            row
            | {"heldout_recovery": iv(heldout), "collected_recovery": iv(heldout)}
            | {"never_collected_recovery": iv(never)}
        )

    changes = [change("small", 0, 0.1, None), change("small", 1, 0.3, 0.2)]
    changes.append(change("base", 0, 0.5, 0.0))
    [over] = jobs.sweep._seed_changes(changes)  # "base" has one seed: no interval over seeds
    assert (over["size"], over["seeds"], over["from"], over["to"]) == ("small", [0, 1], 300, 2400)
    # mean 0.2; sd 0.1414, se 0.1, t(0.975, 1 df) = 12.706
    assert over["heldout_recovery"]["mean"] == pytest.approx(0.2)
    assert over["heldout_recovery"]["hi"] == pytest.approx(0.2 + 1.2706, abs=1e-4)
    assert over["never_collected_recovery"] is None, "a seed without a change has no interval"


def test_a_point_is_named_by_its_seed_only_when_seeds_are_given():
    # sweeps written before --seeds (one seed, SIZE-N) must still resume
    assert jobs.sweep._point_name("small", 300, None) == "small-300"
    assert jobs.sweep._point_name("small", 300, 0) == "small-300-seed0"
