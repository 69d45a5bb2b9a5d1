"""The bias-tuning simulator that `hyperflow collect` drives through the engine.

A shard is a fixed range of episode indices (or, in a focused store, a fixed tuple of them), so
its contents are a pure function of the spec and its index: any worker can (re)do any shard and
produce the same records, ids included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from engine.record import SCHEMA_VERSION, TrajectoryRecord, make_id
from hyperflow.adapt.simulate import initial_theta, simulate
from hyperflow.data import load_dataset
from hyperflow.data.episodes import EpisodeSampler, EpisodeSpec, build_episode
from hyperflow.data.procedural import PRIMITIVE_COUNTS, check_exclude
from hyperflow.model import load_target, target_id

_COLLECT_STREAM = 2  # Collector.episode's random stream, apart from the sampler's


# spec keys added after stores were first written, with the value those stores were written with
IMPLIED_BY_OLDER_STORES = {
    "theta_encoding": "delta2",
    "procedural_exclude": [],
    "procedural_counts": [2, 4],
}


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
    # primitives the `procedural` shift family may not compose (an ablation); each record's
    # episode spec lists the composition its episode drew
    procedural_exclude: tuple[str, ...] = ()
    procedural_counts: tuple[int, int] = PRIMITIVE_COUNTS  # fewest and most primitives

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
            # a config without the key (the schema may not have it yet) excludes nothing
            procedural_exclude=check_exclude(getattr(cc, "procedural_exclude", ()) or ()),
            procedural_counts=tuple(getattr(cc, "procedural_counts", PRIMITIVE_COUNTS)),
        )

    def manifest_config(self) -> dict:
        return {**asdict(self), "schema_version": SCHEMA_VERSION, "optimizer": "adam"}


def shard_episodes(
    spec: CollectSpec, index: int, total: int, shards: tuple[tuple[int, ...], ...] | None = None
) -> range | tuple[int, ...]:
    """Episode indices of shard `index` when the store holds `total` episodes, or its entry of
    `shards` (explicit episode indices per shard, as `hyperflow collect --focus` lays them out)."""
    if shards is not None:
        return shards[index]
    return range(index * spec.shard_size, min(total, (index + 1) * spec.shard_size))


class BiasTuningSimulator:
    """The simulator of `hyperflow collect` (engine.collect protocol): holds the target and the
    dataset; `records(i)` simulates every (episode, init) trajectory of shard i. `shards`: the
    episode indices of each shard, instead of consecutive ranges of spec.shard_size."""

    def __init__(
        self,
        spec: CollectSpec,
        target_dir: str,
        cache_dir: str | None,
        total: int,
        shards: tuple[tuple[int, ...], ...] | None = None,
    ):
        self.spec, self.total, self.layout = spec, total, shards
        # the device Ray gave this actor: with num_gpus > 0 Ray sets CUDA_VISIBLE_DEVICES to its
        # GPU (or share of one); without, to nothing, so CUDA is unavailable and this is the CPU
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_target(target_dir).to(self.device)
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
            exclude=tuple(spec.procedural_exclude),
            counts=tuple(spec.procedural_counts),
        )

    def episode(self, e: int) -> tuple[EpisodeSpec, float, np.random.Generator]:
        """Episode e's spec (shift or clean), learning rate, and the generator its inits use."""
        s = self.spec
        # the sampler draws episode e from default_rng([seed, e]); these draws need a stream of
        # their own: on that same stream "clean" coincided with one shift family, which then
        # never occurred
        rng = np.random.default_rng([s.seed, e, _COLLECT_STREAM])
        spec = self.sampler.spec(e)
        if s.shifts and rng.random() < s.clean_fraction:
            spec = replace(spec, shift=None, composition=())
        lr = float(np.exp(rng.uniform(np.log(s.lr_min), np.log(s.lr_max))))
        return spec, lr, rng

    def shards(self) -> int:
        if self.layout is not None:
            return len(self.layout)
        return -(-self.total // self.spec.shard_size)

    def records(self, index: int) -> list[TrajectoryRecord]:
        """Simulate every (episode, init) trajectory of shard `index`."""
        s = self.spec
        episodes, theta0, lrs, seeds, keys = [], [], [], [], []
        for e in shard_episodes(s, index, self.total, self.layout):
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
