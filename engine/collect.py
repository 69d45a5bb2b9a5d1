"""The collection worker: simulate the trajectories of one shard and write that shard.

A shard is a fixed range of episode indices, so its contents are a pure function of the config and
its index: any worker can (re)do any shard and produce the same records, ids included. The worker
returns only ShardInfo metadata; trajectories never travel through the object store.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine.manifest import ShardInfo
from engine.pool import ResilientPool
from engine.record import SCHEMA_VERSION, TrajectoryRecord, make_id
from engine.stores import STORES, shard_name, write_shard
from hyperflow.adapt.simulate import initial_theta, simulate
from hyperflow.data import load_dataset
from hyperflow.data.episodes import EpisodeSampler, EpisodeSpec, build_episode
from hyperflow.model import load_target, target_id

_COLLECT_STREAM = 2  # Collector.episode's random stream, apart from the sampler's


# spec keys added after stores were first written, with the value those stores were written with
IMPLIED_BY_OLDER_STORES = {"theta_encoding": "delta2"}


@dataclass(frozen=True)
class CollectSpec:
    """Everything that determines a store's contents; it is also the manifest's config."""

    run: str  # id prefix; no dots
    target: str  # target id (digest of its weights)
    layout_hash: str
    backbone: str
    dataset: str
    domains: tuple[str, ...]
    way: int
    shot: int
    query: int
    variable: bool
    shifts: tuple[str, ...]
    clean_fraction: float
    steps: int  # T
    lr_min: float
    lr_max: float
    inits: int
    sigma: float
    shard_size: int  # episodes per shard
    theta_dtype: str
    theta_encoding: str  # engine.stores.encoding
    seed: int

    @classmethod
    def from_config(cls, cfg, model, target_dir: str, domains: list[str], run: str) -> CollectSpec:
        """The spec of a `hyperflow.config.Config` for a loaded target and chosen domains."""
        cc, ec = cfg.collect, cfg.episodes
        return cls(
            run=run,
            target=target_id(target_dir),
            layout_hash=model.layout.hash(),
            backbone=model.cfg.backbone,
            dataset=cfg.data.dataset,
            domains=tuple(domains),
            way=ec.way,
            shot=ec.shot,
            query=ec.query,
            variable=ec.variable,
            shifts=tuple(cc.shifts),
            clean_fraction=cc.clean_fraction,
            steps=cfg.adapt.steps,
            lr_min=cc.lr_min,
            lr_max=cc.lr_max,
            inits=cc.inits,
            sigma=cc.sigma,
            shard_size=cc.shard_size,
            theta_dtype=cc.theta_dtype,
            theta_encoding=cc.theta_encoding,
            seed=cc.seed,
        )

    def manifest_config(self) -> dict:
        return {**asdict(self), "schema_version": SCHEMA_VERSION, "optimizer": "adam"}


def shard_episodes(spec: CollectSpec, index: int, total: int) -> range:
    """Episode indices of shard `index` when the store holds `total` episodes."""
    return range(index * spec.shard_size, min(total, (index + 1) * spec.shard_size))


class Collector:
    """Ray actor (or plain object): holds the target and dataset, writes whole shards."""

    def __init__(
        self,
        spec: CollectSpec,
        target_dir: str,
        store: str,
        formats: list[str],
        cache_dir: str | None,
        total: int,
        threads: int = 1,
    ):
        torch.set_num_threads(threads)
        self.spec, self.store, self.formats, self.total = spec, Path(store), formats, total
        self.model = load_target(target_dir)
        cfg = self.model.cfg
        self.data = load_dataset(spec.dataset, cfg.image_size, cfg.channels, cache_dir)
        self.sampler = EpisodeSampler(
            self.data,
            list(spec.domains),
            spec.way,
            spec.shot,
            spec.query,
            spec.seed,
            variable=spec.variable,
            shifts=tuple(spec.shifts),
        )

    def ready(self) -> bool:
        return True

    def episode(self, e: int) -> tuple[EpisodeSpec, float, np.random.Generator]:
        """Episode e's spec (shift or clean), learning rate, and the generator its inits use."""
        s = self.spec
        # the sampler draws episode e from default_rng([seed, e]); these draws need a stream of
        # their own: on that same stream "clean" coincided with one shift family, which then
        # never occurred
        rng = np.random.default_rng([s.seed, e, _COLLECT_STREAM])
        spec = self.sampler.spec(e)
        if s.shifts and rng.random() < s.clean_fraction:
            spec = replace(spec, shift=None)
        lr = float(np.exp(rng.uniform(np.log(s.lr_min), np.log(s.lr_max))))
        return spec, lr, rng

    def records(self, index: int) -> list[TrajectoryRecord]:
        """Simulate every (episode, init) trajectory of shard `index`."""
        s = self.spec
        episodes, theta0, lrs, seeds, keys = [], [], [], [], []
        for e in shard_episodes(s, index, self.total):
            spec, lr, rng = self.episode(e)
            ep = build_episode(self.data, spec)
            for k in range(s.inits):
                gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
                theta0.append(initial_theta(self.model, 1, s.sigma if k else 0.0, gen)[0])
                episodes.append(ep)
                lrs.append(lr)
                seeds.append(int(rng.integers(2**62)))
                keys.append((e, k))
        traj = simulate(
            self.model, episodes, torch.stack(theta0), torch.tensor(lrs), s.steps, seeds
        )
        out = []
        for j, ((e, k), ep) in enumerate(zip(keys, episodes)):
            meta = {
                "optimizer": "adam",
                "lr": lrs[j],
                "T": s.steps,
                "sigma": s.sigma if k else 0.0,
                "seed": seeds[j],
                "backbone": s.backbone,
                "layout_hash": s.layout_hash,
                "target": s.target,
                "schema_version": SCHEMA_VERSION,
                "episode_index": e,
                "init": k,
            }
            out.append(
                TrajectoryRecord(
                    id=make_id(s.run, e, k),
                    episode=ep.spec.to_dict(),
                    support=ep.support_x.numpy(),
                    labels=ep.support_y.numpy().astype(np.int64),
                    theta=traj.theta[j].numpy().astype(np.float32),
                    loss=traj.loss[j].numpy().astype(np.float32),
                    meta=meta,
                )
            )
        return out

    def shard(self, index: int, formats: list[str] | None = None) -> dict:
        """Simulate shard `index` and write it in `formats` (default: every format of the store).

        Returns its ShardInfos and timings. The driver passes only the formats not yet committed:
        a committed shard file is never rewritten, even with the same bytes, because readers may
        be streaming it.
        """
        start = time.perf_counter()
        records = self.records(index)
        simulated = time.perf_counter()
        infos: list[ShardInfo] = []
        name = shard_name(index)
        for fmt in self.formats if formats is None else formats:
            final = STORES[fmt].shard_path(self.store, name)
            if final.exists():  # renamed by a writer that died before reporting: not committed
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            encoding = (self.spec.theta_dtype, self.spec.theta_encoding)
            infos.append(write_shard(self.store, fmt, name, records, *encoding))
        done = time.perf_counter()
        return {
            "index": index,
            "infos": infos,
            "records": len(records),
            "simulate_s": simulated - start,
            "write_s": done - simulated,
        }


@dataclass
class CollectStats:
    trajectories: int  # simulated in this run (committed shards from earlier runs excluded)
    seconds: float  # wall time from actors ready to last commit
    simulate_s: float  # summed over workers
    write_s: float  # summed over workers
    replaced: int  # actors that died and were replaced

    @property
    def write_fraction(self) -> float:
        return self.write_s / max(1e-9, self.simulate_s + self.write_s)


def collect(
    spec: CollectSpec,
    manifest,
    todo: list[int],
    init: dict,
    workers: int,
    num_cpus: float = 1,
    num_gpus: float = 0,
    progress=None,
    actor_cls: type = Collector,
) -> CollectStats:
    """Run shards `todo` on `workers` Ray actors, committing each to `manifest` as it lands.

    init: Collector keyword arguments. progress(n) is called with each shard's record count,
    after its commit. actor_cls: Collector or a subclass (tests use one to inject faults).
    """
    # each shard is written only in the formats the manifest still lacks (a run killed between
    # the commits of one shard's formats leaves the first committed, and it must stay untouched)
    missing = {
        i: [f for f in manifest.formats if not manifest.committed(shard_name(i), f)] for i in todo
    }
    tasks = [(i, missing[i]) for i in todo if missing[i]]
    pool = ResilientPool(actor_cls, workers, init, num_cpus=num_cpus, num_gpus=num_gpus)
    try:
        pool.call_all("ready")  # time the steady state, not actor start-up
        start = time.perf_counter()
        sim_s = write_s = 0.0
        n = 0
        for _, result in pool.map_unordered("shard", tasks, unpack=True):
            for info in result["infos"]:
                manifest.commit(info)  # raises on a duplicate shard or id: never expected
            sim_s += result["simulate_s"]
            write_s += result["write_s"]
            n += result["records"]
            if progress:
                progress(result["records"])
    finally:  # also on errors: no actor may keep writing into the store after we return
        pool.shutdown()
    return CollectStats(n, time.perf_counter() - start, sim_s, write_s, pool.replaced)
