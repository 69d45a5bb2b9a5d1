"""`hyperflow evaluate`: paired, deterministic across worker counts, report files, clear errors."""

from __future__ import annotations

import json

import pytest

import jobs.evaluate
from hyperflow.bias import select_biases
from hyperflow.drift import DriftConfig, DriftNet, save_drift
from hyperflow.model import load_target
from jobs.cli import main

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


def test_same_results_with_one_or_two_workers(cli, cluster_env, tiny_target, drift_dir, tmp_path):
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
            # memory measured once (w1); w2 shows the switch that leaves it out
            *(["--set", "evaluate.memory=false"] if workers == 2 else []),
            "--out",
            str(out),
            env=cluster_env(f"w{workers}"),  # the session's Ray cluster, one thread per process
        )
        runs[workers] = json.loads((out / "results.json").read_text())
    one, two = runs[1], runs[2]
    assert _accs(one) == _accs(two)
    assert {m["peak_memory_bytes"] for m in two["methods"].values()} == {None}
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
    # what the figure is for: doing nothing costs least, forward passes less than Adam's backward
    # passes (an exact allocator count, hyperflow/evaluation/memory.py: no noise to allow for)
    mem = {name: m["peak_memory_bytes"] for name, m in one["methods"].items()}
    assert mem["direct"] < mem["hyperflow_cubic@1"] < mem["bias_tuning"], mem
    assert mem["hyperflow_cubic@5"] < mem["bias_tuning"], mem
    # one row per evaluated episode, the same episodes for every method (paired)
    episodes = {(r["domain"], r["id"], r["seed"]) for r in one["methods"]["direct"]["episodes"]}
    assert len(episodes) == 3 * 2 and {d for d, _, _ in episodes} == set(one["domains"])
    for name, m in one["methods"].items():
        rows = m["episodes"]
        assert {(r["domain"], r["id"], r["seed"]) for r in rows} == episodes, name
        for d, a in m["acc"].items():
            accs = [r["acc"] for r in rows if r["domain"] == d]
            assert sum(accs) / len(accs) == pytest.approx(a["mean"]), (name, d)
    assert one["paired"]["domains"] == ["georgian-noise", "hebrew-invert"]
    assert one["paired"]["methods"]["direct"]["diff"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    assert "Paired 95% intervals" in (tmp_path / "w1" / "results.md").read_text()
    assert one["methods"]["hyperflow_cubic@5"]["solver_steps"] == 5
    assert one["methods"]["direct"]["solver_steps"] is None
    out = tmp_path / "w1"
    for name in ("results.md", "accuracy_vs_time.png", "loss_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert "hyperflow_cubic@5" in (out / "results.md").read_text()


def _refused(argv: list[str], monkeypatch, capsys) -> str:
    """Run `hyperflow evaluate ARGV` in this process; it must exit 2 before Ray starts (in-process:
    no interpreter start-up per case). Returns stderr."""

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the input was refused")

    monkeypatch.setattr(jobs.evaluate, "connect", no_ray)
    try:
        code = main(["evaluate", "--config", "tiny", *argv])
    except SystemExit as e:  # argparse refuses --episodes 0 itself
        code = e.code
    assert code == 2
    return capsys.readouterr().err


def test_drift_for_another_layout_is_refused(tiny_target, tmp_path, monkeypatch, capsys):
    other = _drift(tiny_target, tmp_path / "other" / "piecewise_cubic", ["layer1.*.bias"])
    argv = ["--target", str(tiny_target), "--drift", str(other.parent), "--methods", METHODS]
    err = _refused([*argv, "--episodes", "1", "--out", str(tmp_path / "out")], monkeypatch, capsys)
    assert "bias layout" in err
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
        (["--set", "evaluate.gpus_per_worker=-1"], "'evaluate.gpus_per_worker' must be >= 0"),
        # the workers ask Ray for a GPU this machine does not have: refused, naming it
        (
            ["--methods", "direct", "--set", "evaluate.gpus_per_worker=1"]
            + ["--set", "evaluate.placement_timeout=3"],
            "'GPU': 1",
        ),
    ],
)
def test_bad_input_is_a_clear_error(
    cli, cluster_env, tiny_target, tmp_path, monkeypatch, capsys, argv, needle
):
    base = ["--target", str(tiny_target), "--out", str(tmp_path / "out")]
    if "evaluate.placement_timeout=3" in argv:  # refused by Ray itself: the session's cluster
        env = cluster_env("no-gpu")
        proc = cli("evaluate", "--config", "tiny", *base, *argv, check=False, env=env)
        assert proc.returncode != 0
        err = proc.stderr
    else:
        err = _refused([*base, *argv], monkeypatch, capsys)
    assert needle in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_line_search_variants_report_their_floors(cli, cluster_env, tiny_target, tmp_path):
    drift = _drift(tiny_target, tmp_path / "linear", interpolant="linear")
    out = tmp_path / "out"
    # one held-out domain: what is reported per method does not depend on the domains
    one = "evaluate.domains=[hebrew-invert]"
    sets = [one, "evaluate.solver_steps=[1]", "evaluate.step_scales=[1,2]"]
    cli(
        *("evaluate", "--config", "tiny", "--target", str(tiny_target), "--drift", str(drift)),
        *("--methods", "hyperflow_linear,hyperflow_linear_ls"),
        *("--episodes", "1", "--workers", "1", "--out", str(out)),
        *[x for kv in sets for x in ("--set", kv)],
        env=cluster_env("line-search"),
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


def test_bad_step_scales_are_refused(tiny_target, tmp_path, monkeypatch, capsys):
    # the other bad values: tests/hyperflow/test_config.py
    argv = ["--target", str(tiny_target), "--methods", "hyperflow_linear_ls"]
    argv += ["--set", "evaluate.step_scales=[1,0]", "--out", str(tmp_path / "out")]
    assert "evaluate.step_scales" in _refused(argv, monkeypatch, capsys)
    assert not (tmp_path / "out").exists()
