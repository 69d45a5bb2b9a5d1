"""`hyperflow evaluate`: paired, deterministic across worker counts, report files, clear errors."""

from __future__ import annotations

import json

import pytest

from hyperflow.bias import select_biases
from hyperflow.drift import DriftConfig, DriftNet, save_drift
from hyperflow.model import load_target

METHODS = "direct,bias_tuning,hyperflow_cubic"
DOMAINS = "evaluate.domains=[latin,georgian-noise,hebrew-invert]"  # one base, two held-out


def _drift(target_dir, out, include=None, interpolant="piecewise_cubic"):
    """An untrained but valid drift network for the target (or for another bias layout)."""
    model = load_target(target_dir)
    layout = select_biases(model.backbone, include) if include else model.layout
    net = DriftNet(
        layout,
        DriftConfig("small", "target", interpolant),
        model.backbone,
        model.feature_dim,
        horizon=5,
    )
    save_drift(net, out)
    return out


@pytest.fixture(scope="module")
def drift_dir(tiny_target, tmp_path_factory):
    return _drift(tiny_target, tmp_path_factory.mktemp("drift") / "piecewise_cubic")


def _accs(results: dict) -> dict:
    return {m: {d: v["mean"] for d, v in r["acc"].items()} for m, r in results["methods"].items()}


def test_same_results_with_one_or_two_workers(cli, tiny_target, drift_dir, tmp_path):
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        cli(
            "evaluate",
            "--config",
            "tiny",
            "--target",
            str(tiny_target),
            "--drift",
            str(drift_dir),
            "--methods",
            METHODS,
            "--episodes",
            "2",
            "--set",
            DOMAINS,
            "--workers",
            str(workers),
            "--out",
            str(out),
        )
        runs[workers] = json.loads((out / "results.json").read_text())
    one, two = runs[1], runs[2]
    assert _accs(one) == _accs(two)
    assert set(one["methods"]) == {
        "direct",
        "bias_tuning",
        "hyperflow_cubic@1",
        "hyperflow_cubic@5",
    }
    heldout = [d for d, v in one["domains"].items() if v["split"] == "heldout"]
    assert heldout and all(v["split"] in ("base", "heldout") for v in one["domains"].values())
    for name, m in one["methods"].items():
        assert set(m["acc"]) == {"latin", "georgian-noise", "hebrew-invert"}, name
        assert all(a["n"] == 2 and 0 <= a["mean"] <= 1 for a in m["acc"].values())
        assert m["peak_memory_bytes"] is not None and m["adapt_seconds_per_episode"] >= 0
    assert one["methods"]["hyperflow_cubic@5"]["solver_steps"] == 5
    assert one["methods"]["direct"]["solver_steps"] is None
    out = tmp_path / "w1"
    for name in ("results.md", "accuracy_vs_time.png", "loss_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert "hyperflow_cubic@5" in (out / "results.md").read_text()


def test_drift_for_another_layout_is_refused(cli, tiny_target, tmp_path):
    other = _drift(tiny_target, tmp_path / "other" / "piecewise_cubic", ["layer1.*.bias"])
    proc = cli(
        "evaluate",
        "--config",
        "tiny",
        "--target",
        str(tiny_target),
        "--drift",
        str(other.parent),
        "--methods",
        METHODS,
        "--episodes",
        "1",
        "--out",
        str(tmp_path / "out"),
        check=False,
    )
    assert proc.returncode != 0
    assert "bias layout" in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--dataset", "nope"], "nope"),
        (["--dataset", "folder:/no/such/dir"], "/no/such/dir"),
        (["--episodes", "0"], "--episodes"),
        (["--methods", "direct,telepathy"], "telepathy"),
        (["--set", "evaluate.episodez=3"], "evaluate.episodez"),
        (["--set", "evaluate.encode_chunk=-1"], "encode_chunk"),
        (["--methods", "hyperflow_linear", "--set", "evaluate.solver=heun"], "heun"),
        (["--methods", "hyperflow_linear", "--set", "evaluate.solver_steps=[5,0]"], "solver_steps"),
        (["--set", "evaluate.gpus_per_worker=-1"], "evaluate.gpus_per_worker=-1"),
        # the workers ask Ray for a GPU this machine does not have: refused, naming it
        (
            ["--methods", "direct", "--set", "evaluate.gpus_per_worker=1"]
            + ["--set", "evaluate.placement_timeout=3"],
            "'GPU': 1",
        ),
    ],
)
def test_bad_input_is_a_clear_error(cli, tiny_target, tmp_path, argv, needle):
    proc = cli(
        "evaluate",
        "--config",
        "tiny",
        "--target",
        str(tiny_target),
        "--out",
        str(tmp_path / "out"),
        *argv,
        check=False,
    )
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_line_search_variants_report_their_floors(cli, tiny_target, tmp_path):
    drift = _drift(tiny_target, tmp_path / "linear", interpolant="linear")
    out = tmp_path / "out"
    sets = [DOMAINS, "evaluate.solver_steps=[1]", "evaluate.step_scales=[1,2]"]
    cli(
        *("evaluate", "--config", "tiny", "--target", str(tiny_target), "--drift", str(drift)),
        *("--methods", "hyperflow_linear,hyperflow_linear_ls"),
        *("--episodes", "1", "--workers", "1", "--out", str(out)),
        *[x for kv in sets for x in ("--set", kv)],
    )
    methods = json.loads((out / "results.json").read_text())["methods"]
    assert set(methods) == {"hyperflow_linear@1", "hyperflow_linear_ls@1"}
    ls = methods["hyperflow_linear_ls@1"]
    # one encoder pass, then the clean and augmented support at each of the 2 scales
    assert ls["support_forwards"] == 5 and ls["step_scales"] == [1.0, 2.0]
    assert ls["solver_steps"] == 1 and ls["peak_memory_bytes"] is not None
    assert ls["adapt_seconds_per_episode"] > 0
    assert methods["hyperflow_linear@1"]["support_forwards"] == 1
    assert methods["hyperflow_linear@1"]["step_scales"] is None
    assert "hyperflow_linear_ls@1" in (out / "results.md").read_text()


def test_bad_step_scales_are_refused(cli, tiny_target, tmp_path):
    # the other bad values: tests/hyperflow/evaluation/test_plan.py
    proc = cli(
        *("evaluate", "--config", "tiny", "--target", str(tiny_target)),
        *("--methods", "hyperflow_linear_ls", "--set", "evaluate.step_scales=[1,0]"),
        *("--out", str(tmp_path / "out")),
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "evaluate.step_scales" in proc.stderr
    assert not (tmp_path / "out").exists()
