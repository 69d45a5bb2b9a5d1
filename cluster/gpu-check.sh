#!/usr/bin/env bash
# Run on a GPU node (NOT run on the development machine, which has no GPU): collects the `tiny`
# config's trajectories once on the CPU and once on CUDA (collect.gpus_per_worker=0.5: two
# simulators share the GPU) from the same untrained target, then checks that both stores hold the
# same records in the same format: ids, episodes, support images, labels and metadata equal; theta
# and loss equal up to float rounding (CUDA kernels round differently from the CPU's).
# Then it trains a drift network on the CPU store and evaluates `tiny` twice, with the workers on
# the CPU and on CUDA (evaluate.gpus_per_worker=0.5), and checks that both results.json hold the
# same (method, domain, episode count), that peak memory was measured on the device that adapted
# (memory_device), and that accuracies agree within one query image per episode on average.
# Usage: bash cluster/gpu-check.sh [WORKDIR]   (needs the package installed, e.g. `make install`)
set -euo pipefail
work=${1:-$(mktemp -d)}
py=${PYTHON:-python}
$py -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device here")'

$py - "$work/target" <<'PY'
import sys, torch
from hyperflow.model import TargetConfig, TargetModel, save_target
torch.manual_seed(0)
save_target(TargetModel(TargetConfig(backbone="test_resnet", channels=1, image_size=32)).eval(),
            sys.argv[1])
PY
for device in cpu cuda; do
  gpus=0; [ "$device" = cuda ] && gpus=0.5
  $py -m jobs.cli collect --config tiny --target "$work/target" --out "$work/store-$device" \
      --set collect.gpus_per_worker=$gpus
  $py -m jobs.cli inspect "$work/store-$device" --verify
done

$py - "$work/store-cpu" "$work/store-cuda" <<'PY'
import sys
import numpy as np
from engine.stores import read_records
for fmt in ("zarr", "wds"):
    cpu = {r.id: r for r in read_records(sys.argv[1], fmt)}
    gpu = {r.id: r for r in read_records(sys.argv[2], fmt)}
    assert cpu.keys() == gpu.keys(), f"{fmt}: record ids differ"
    worst = 0.0
    for rid, a in cpu.items():
        b = gpu[rid]
        assert a.episode == b.episode and a.meta == b.meta, f"{rid}: episode/meta differ"
        assert np.array_equal(a.support, b.support) and np.array_equal(a.labels, b.labels), rid
        assert a.theta.dtype == b.theta.dtype and a.theta.shape == b.theta.shape, rid
        diff = np.abs(a.theta.astype(np.float64) - b.theta.astype(np.float64)).max()
        worst = max(worst, float(diff))
        assert np.allclose(a.loss, b.loss, rtol=1e-2, atol=1e-3), f"{rid}: loss differs"
    # 5 Adam steps at lr 0.03 move a bias by at most ~0.15; rounding differences stay far below
    assert worst < 1e-2, f"{fmt}: theta differs by up to {worst}"
    print(f"{fmt}: {len(cpu)} records agree; largest theta difference {worst:.2e}")
PY
echo "gpu-check: collection on CUDA writes the CPU format and the same trajectories"

$py -m jobs.cli train --config tiny --store "$work/store-cpu" --target "$work/target" \
    --out "$work/drift" --interpolant piecewise_cubic
for device in cpu cuda; do
  gpus=0; [ "$device" = cuda ] && gpus=0.5
  $py -m jobs.cli evaluate --config tiny --target "$work/target" --drift "$work/drift" \
      --methods direct,bias_tuning,hyperflow_cubic --out "$work/eval-$device" \
      --set evaluate.gpus_per_worker=$gpus
done

$py - "$work/eval-cpu/results.json" "$work/eval-cuda/results.json" <<'PY'
import json, sys
cpu, gpu = (json.load(open(p)) for p in sys.argv[1:])
assert cpu["methods"].keys() == gpu["methods"].keys(), "methods differ"
query = cpu["way"] * 15  # tiny: 15 query images per class (episodes.query)
for name, a in cpu["methods"].items():
    b = gpu["methods"][name]
    assert a["memory_device"] == "cpu" and b["memory_device"].startswith("cuda"), name
    assert a["acc"].keys() == b["acc"].keys(), f"{name}: domains differ"
    for d in a["acc"]:
        assert a["acc"][d]["n"] == b["acc"][d]["n"], f"{name}/{d}: episode counts differ"
        # accuracies are fractions: one query image of one episode moves a domain's mean by
        # 1 / (query * n); float rounding may flip a borderline image now and then, no more
        gap = abs(a["acc"][d]["mean"] - b["acc"][d]["mean"])
        assert gap <= 1 / query + 1e-6, f"{name}/{d}: accuracies {gap:.3f} apart"
    print(f"{name}: CPU and CUDA agree; peak memory {b['peak_memory_bytes']} B on {b['memory_device']}")
PY
echo "gpu-check: evaluation adapts on CUDA, measures memory there, and matches the CPU run"
