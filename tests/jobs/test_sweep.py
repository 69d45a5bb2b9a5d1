"""`hyperflow sweep`: a grid of drift networks on nested subsets, evaluated on the same episodes
with baselines copied, reported as a table and a PNG, and continued where it stopped."""

from __future__ import annotations

import json

DOMAINS = "evaluate.domains=[latin,hebrew-invert,georgian-noise]"
QUIET = {"OMP_NUM_THREADS": "1"}


def _sweep(cli, store, target, baselines, out, *extra, check=True):
    argv = ["sweep", "--config", "tiny", "--store", str(store), "--target", str(target)]
    argv += ["--baselines", str(baselines), "--out", str(out), "--steps", "5", "--sizes", "small"]
    return cli(*argv, *extra, check=check, env=QUIET)


def test_a_sweep_trains_each_point_reports_it_and_resumes(cli, local_store, untrained_target,
                                                          tmp_path):  # fmt: skip
    store = local_store["store"]
    base = tmp_path / "baselines"
    cli("evaluate", "--config", "tiny", "--target", str(untrained_target), "--out", str(base),
        "--methods", "direct,bias_tuning", "--set", DOMAINS, env=QUIET)  # fmt: skip
    out = tmp_path / "sweep"
    proc = _sweep(cli, store, untrained_target, base, out, "--records", "8,16")
    rows = json.loads(proc.stdout)["rows"]
    assert [(r["size"], r["records"]) for r in rows] == [("small", 8), ("small", 16)]
    # nested subsets: each point trained on exactly its share of the store
    for n in (8, 16):
        drift = json.loads((out / f"small-{n}" / "drift.json").read_text())
        assert drift["extra"]["train_config"]["max_records"] == n
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
    cells = [(p["size"], p["records"], p["seed"]) for p in points]
    assert cells == [("small", 8, 0), ("small", 16, 0)]
    for p in points:
        assert p["store"] == str(store)
        for key in ("heldout_recovery", "collected_recovery", "never_collected_recovery"):
            assert p[key] is None or set(p[key]) == {"mean", "lo", "hi"}, key
    assert all(p["heldout_recovery"] is not None for p in points), "the baselines have rows"
    assert "[sweep] hyperflow train" in proc.stderr

    # a finished point is skipped: a larger grid only runs its new points
    (out / "scaling.md").unlink()
    again = _sweep(cli, store, untrained_target, base, out, "--records", "8,16")
    assert "[sweep] hyperflow" not in again.stderr
    assert json.loads(again.stdout)["rows"] == rows
    assert (out / "scaling.md").read_text() == table


def test_bad_grids_are_refused_before_anything_runs(cli, local_store, untrained_target, tmp_path):
    store, base = local_store["store"], tmp_path / "none"
    out = tmp_path / "sweep"
    proc = _sweep(cli, store, untrained_target, base, out, "--records", "8,1000000", check=False)
    assert proc.returncode == 2 and "1000000" in proc.stderr
    proc = _sweep(cli, store, untrained_target, base, out, "--sizes", "huge", check=False)
    assert proc.returncode == 2 and "'huge'" in proc.stderr
    proc = _sweep(cli, store, untrained_target, base, out, "--records", "8", check=False)
    assert proc.returncode == 2 and "--baselines" in proc.stderr
    assert not out.exists(), "nothing is written for a refused grid"
