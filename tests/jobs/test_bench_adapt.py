"""`hyperflow bench adapt`: HyperFlow's adaptation cost relative to bias-tuning's, as JSON."""

import json


def test_bench_adapt_reports_costs_relative_to_bias_tuning(cli, tiny_target):
    argv = ["bench", "adapt", "--config", "tiny", "--target", str(tiny_target)]
    r = json.loads(cli(*argv, "--episodes", "1", "--json").stdout)
    methods = r["methods"]
    assert set(methods) == {"bias_tuning", "hyperflow_cubic@1", "hyperflow_cubic@5"}  # tiny's
    bias, hf = methods["bias_tuning"], methods["hyperflow_cubic@1"]
    assert bias["time_ratio"] == 1 and bias["peak_memory_bytes"] > 0
    # no backward pass and no optimizer state: far cheaper, even for the untrained stand-in
    assert 0 < hf["time_ratio"] < 0.5 and 0 < hf["memory_ratio"] < 0.5
    # its task encoding is a forward pass of the support set plus hooks: above the floor
    assert 0 < r["floor_time_ratio"] < hf["time_ratio"]
    assert r["meets"] == {
        "time": hf["time_ratio"] <= r["targets"]["time_ratio_max"],
        "memory": hf["memory_ratio"] <= r["targets"]["memory_ratio_max"],
    }
