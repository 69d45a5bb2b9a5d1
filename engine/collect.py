"""Collection: Ray actors run a simulator shard by shard and write each shard to the store.

The engine knows nothing of what it simulates. A simulator is any class with

    records(index: int) -> list[TrajectoryRecord]    # shard `index`, a pure function of the
                                                     # simulator's arguments and the index

built inside each actor from (class, keyword arguments): hyperflow.simulator.BiasTuningSimulator
for `hyperflow collect`, engine.synthetic.SyntheticSimulator for scale tests and benchmarks.
Since a shard's records depend on nothing else, any actor can (re)do any shard. Actors return
only ShardInfo metadata; trajectories never travel through Ray's object store. The driver
commits each shard as it lands (engine.manifest) and compacts the manifest at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.pool import ResilientPool
from engine.stores import shard_name, write_shard


class ShardWriter:
    """Ray actor (or plain object): builds the simulator once, then simulates and writes shards."""

    def __init__(
        self,
        simulator: type,
        simulator_kwargs: dict,
        store: str,
        formats: list[str],
        theta_dtype: str | None = "float16",
        theta_encoding: str = "delta2",
        threads: int = 1,
    ):
        import torch  # here, not at the top: the driver never loads torch (~0.7 GB resident)

        torch.set_num_threads(threads)
        self.sim = simulator(**simulator_kwargs)
        self.store, self.formats = store, formats
        self.encoding = (theta_dtype, theta_encoding)

    def ready(self) -> bool:
        return True

    def shard(self, index: int, formats: list[str] | None = None) -> dict:
        """Simulate shard `index` and write it in `formats` (default: every format of the store).

        Returns its ShardInfos and timings. The driver passes only the formats not yet committed:
        a committed shard's objects are never rewritten, even with the same bytes, because
        readers may be streaming them.
        """
        start = time.perf_counter()
        records = self.sim.records(index)
        simulated = time.perf_counter()
        name = shard_name(index)
        infos = [
            write_shard(self.store, fmt, name, records, *self.encoding)
            for fmt in (self.formats if formats is None else formats)
        ]
        return {
            "index": index,
            "infos": infos,
            "records": len(records),
            "simulate_s": simulated - start,
            "write_s": time.perf_counter() - simulated,
        }


@dataclass
class CollectStats:
    trajectories: int  # simulated in this run (committed shards from earlier runs excluded)
    seconds: float  # wall time from actors ready to last commit
    simulate_s: float  # summed over workers
    write_s: float  # summed over workers
    commit_s: list[float]  # driver seconds per commit, in commit order
    replaced: int  # actors that died and were replaced

    @property
    def write_fraction(self) -> float:
        return self.write_s / max(1e-9, self.simulate_s + self.write_s)


def collect(
    manifest,
    todo: list[int],
    writer: dict,
    workers: int,
    num_cpus: float = 1,
    num_gpus: float = 0,
    progress=None,
    actor_cls: type = ShardWriter,
    placement_timeout: float = 300.0,
    replace_fraction: float = 0.25,
) -> CollectStats:
    """Run shards `todo` on `workers` Ray actors, committing each to `manifest` as it lands.

    writer: ShardWriter keyword arguments (simulator class and its kwargs, store, formats, ...).
    progress(n, seconds) is called after each shard's commit with its record count and the
    seconds the commit took the driver. actor_cls:
    ShardWriter or a subclass (tests use one to inject faults). placement_timeout and
    replace_fraction: see engine.pool.ResilientPool.
    """
    # each shard is written only in the formats the manifest still lacks (a run killed between
    # the commits of one shard's formats leaves the first committed, and it must stay untouched)
    missing = {
        i: [f for f in manifest.formats if not manifest.committed(shard_name(i), f)] for i in todo
    }
    tasks = [(i, missing[i]) for i in todo if missing[i]]
    pool = ResilientPool(
        actor_cls,
        workers,
        writer,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        placement_timeout=placement_timeout,
        replace_fraction=replace_fraction,
    )
    try:
        pool.call_all("ready")  # time the steady state, not actor start-up
        start = time.perf_counter()
        sim_s = write_s = 0.0
        commit_s: list[float] = []
        n = 0
        for _, result in pool.map_unordered("shard", tasks, unpack=True):
            t0 = time.perf_counter()
            for info in result["infos"]:
                manifest.commit(info)  # raises on a duplicate shard or id: never expected
            commit_s.append(time.perf_counter() - t0)
            sim_s += result["simulate_s"]
            write_s += result["write_s"]
            n += result["records"]
            if progress:
                progress(result["records"], commit_s[-1])
        manifest.compact()
    finally:  # also on errors: no actor may keep writing into the store after we return
        pool.shutdown()
    return CollectStats(n, time.perf_counter() - start, sim_s, write_s, commit_s, pool.replaced)
