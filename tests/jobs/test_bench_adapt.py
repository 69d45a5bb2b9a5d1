"""`hyperflow bench adapt`: HyperFlow's adaptation cost against bias-tuning's and the floor (one
plain forward pass of the support set), on the same episodes, as JSON."""

import json

import pytest

KEYS = {"seconds_per_episode", "peak_memory_bytes", "memory_device", "time_ratio", "memory_ratio"}


def test_bench_adapt_reports_hyperflow_against_bias_tuning_and_the_floor(cli, tiny_target):
    argv = ["bench", "adapt", "--config", "tiny", "--target", str(tiny_target), "--episodes", "1"]
    r = json.loads(cli(*argv, "--set", "evaluate.solver_steps=[1,20]", "--json").stdout)
    methods = r["methods"]
    assert set(methods) == {"bias_tuning", "hyperflow_cubic@1", "hyperflow_cubic@20"}
    assert r["episodes"] >= 1 and r["floor_forward_seconds"] > 0  # one per held-out domain
    bias = methods["bias_tuning"]
    assert KEYS <= set(bias) and "floor_ratio" not in bias
    for name in ("hyperflow_cubic@1", "hyperflow_cubic@20"):
        hf = methods[name]
        assert KEYS | {"floor_ratio"} <= set(hf)
        # no backward pass and no optimizer state: far cheaper than bias-tuning's 20 Adam steps
        # on the same episodes, even at 20 solver steps (measured ~4% of its time on 2 cores)
        assert 0 < hf["seconds_per_episode"] < 0.5 * bias["seconds_per_episode"], name
        assert 0 < hf["peak_memory_bytes"] < 0.5 * bias["peak_memory_bytes"], name
        # floor_ratio is these seconds in units of the reported floor
        seconds = hf["floor_ratio"] * r["floor_forward_seconds"]
        assert seconds == pytest.approx(hf["seconds_per_episode"], rel=1e-9), name
    one, twenty = methods["hyperflow_cubic@1"], methods["hyperflow_cubic@20"]
    assert (one["floor_ratio"] < twenty["floor_ratio"]) == (
        one["seconds_per_episode"] < twenty["seconds_per_episode"]
    )
    targets = r["targets"]  # DESIGN.md section 6
    assert targets == {"steps": 20, "floor_ratio_max": 2.0, "memory_ratio_max": 0.10}
    assert set(r["meets"]) == {"time", "memory"}
    assert all(isinstance(v, bool) for v in r["meets"].values())  # 20 steps were measured
    if r["meets"]["time"]:
        assert twenty["floor_ratio"] <= targets["floor_ratio_max"]
    else:
        assert twenty["floor_ratio"] > targets["floor_ratio_max"]
