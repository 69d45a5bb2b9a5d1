"""Collection throughput: the bare batched simulator in a plain loop against the Ray engine with
1 and 2 workers (steady state: timed from all actors ready), the share of worker time spent
writing, and bytes per trajectory of every format x dtype x theta encoding."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from engine.collect import collect
from engine.inspect import storage_report
from engine.pool import connect
from engine.stores import open_store
from hyperflow.config import load_config
from hyperflow.data import load_dataset
from hyperflow.model import TargetModel, load_target, save_target
from hyperflow.simulator import BiasTuningSimulator, CollectSpec

SHARDS, SHARD_SIZE = 8, 4  # 32 trajectories per measurement: enough to balance 2 workers


def bench(args) -> dict:
    cfg = load_config(args.config, args.set)
    tmp = Path(tempfile.mkdtemp(prefix="hf-bench-collect-"))
    target = args.target
    if not target:  # an untrained backbone simulates at the same speed as a trained one
        target = str(tmp / "target")
        save_target(TargetModel(cfg.target).eval(), Path(target))
    model = load_target(target)
    data = load_dataset(
        cfg.data.dataset, model.cfg.image_size, model.cfg.channels, cfg.data.cache_dir
    )
    spec = CollectSpec.from_config(
        cfg, model, target, cfg.collect.domains or data.names("base"), "bench"
    )
    spec = replace(spec, inits=1, shard_size=SHARD_SIZE)
    sim = {"spec": spec, "target_dir": target, "cache_dir": cfg.data.cache_dir}
    sim["total"] = SHARDS * SHARD_SIZE
    writer = {"simulator": BiasTuningSimulator, "simulator_kwargs": sim}
    writer.update(formats=["zarr", "wds"], theta_dtype=cfg.collect.theta_dtype, threads=1)
    writer.update(theta_encoding=cfg.collect.theta_encoding)

    # bare loop: the same simulator and shards, in this process, no Ray, no writing
    torch.set_num_threads(1)
    bare = BiasTuningSimulator(**sim)
    start = time.perf_counter()
    records = [r for i in range(SHARDS) for r in bare.records(i)]
    bare_s = time.perf_counter() - start
    n = len(records)

    connect(None)
    engine = {}
    for workers in (1, 2):
        store = tmp / f"store-{workers}"
        manifest = open_store(store, spec.manifest_config(), writer["formats"])
        engine[workers] = collect(
            manifest, list(range(SHARDS)), {**writer, "store": str(store)}, workers
        )
    storage = storage_report(records)
    one, two = engine[1], engine[2]
    return {
        "bench": "collect",
        "trajectories": n,
        "T": spec.steps,
        "P": model.layout.size,
        "bare_traj_per_s": n / bare_s,
        "engine1_traj_per_s": one.trajectories / one.seconds,
        "engine2_traj_per_s": two.trajectories / two.seconds,
        "engine1_over_bare": (one.trajectories / one.seconds) / (n / bare_s),
        "engine2_over_engine1": one.seconds / two.seconds,
        "write_fraction_1": one.write_fraction,
        "write_fraction_2": two.write_fraction,
        "formats_written": writer["formats"],
        "storage": storage,
    }
