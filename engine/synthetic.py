"""The synthetic simulator: cheap, deterministic trajectories for scale tests and benchmarks.

Its theta paths have the statistics of Adam bias-tuning: theta_0 ~ N(0, 0.1), then T Adam steps
(lr 1e-2) on smooth per-coordinate gradients (a + b t/T + noise), so steps are ~1e-2 and
correlated in time; support images are smooth blobs plus noise, which compress like glyph crops.
Any P, T and image size: with small ones a million records fit in a few GB. Shard `index` is a
pure function of (seed, index), like every simulator's (engine.collect).
"""

from __future__ import annotations

import numpy as np

from engine.record import SCHEMA_VERSION, TrajectoryRecord, make_id


def _records(
    rng: np.random.Generator,
    keys: list[tuple[int, int, int]],  # (episode, init, ordinal in the store) of each record
    run: str,
    T: int,
    P: int,
    n_support: tuple[int, int],
    image: tuple[int, int, int],
    domains: tuple[str, ...],
    seed: int,
) -> list[TrajectoryRecord]:
    R = len(keys)
    theta = np.empty((R, T + 1, P))
    theta[:, 0] = rng.normal(0.0, 0.1, (R, P))
    a, b = rng.normal(0.0, 1.0, (R, P)), rng.normal(0.0, 1.0, (R, P))
    m, v = np.zeros((R, P)), np.zeros((R, P))
    for t in range(1, T + 1):  # Adam on gradient a + b t/T + noise, all records at once
        g = a + b * t / T + 0.3 * rng.normal(0.0, 1.0, (R, P))
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        step = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        theta[:, t] = theta[:, t - 1] - 1e-2 * step
    loss = 2.0 * np.exp(-np.arange(T + 1) / T) + 0.01 * rng.random((R, T + 1))
    loss[:, 0] = 2.0
    C, H, W = image
    hl, wl = max(1, H // 4), max(1, W // 4)
    out = []
    for j, (e, k, ordinal) in enumerate(keys):
        N = int(rng.integers(n_support[0], n_support[1] + 1))
        low = rng.integers(0, 256, (N, C, hl, wl))
        img = low[:, :, np.arange(H) * hl // H][:, :, :, np.arange(W) * wl // W]
        img = img + rng.integers(-8, 9, (N, C, H, W))
        out.append(
            TrajectoryRecord(
                id=make_id(run, e, k),
                episode={"domain": domains[ordinal % len(domains)], "classes": [0, 1, 2, 3, 4]},
                support=np.clip(img, 0, 255).astype(np.uint8),
                labels=(np.arange(N) % 5).astype(np.int64),
                theta=theta[j].astype(np.float32),
                loss=loss[j].astype(np.float32),
                meta={
                    "optimizer": "adam",
                    "lr": 0.01,
                    "T": T,
                    "sigma": 0.0,
                    "seed": seed,
                    "backbone": "synthetic",
                    "schema_version": SCHEMA_VERSION,
                    "episode_index": e,
                    "init": k,
                },
            )
        )
    return out


def synthetic_records(
    n: int,
    *,
    T: int = 20,
    P: int = 5000,
    n_support: int | tuple[int, int] = 25,
    image: tuple[int, int, int] = (1, 32, 32),
    domains: tuple[str, ...] = ("latin", "greek"),
    seed: int = 0,
    run: str = "syn",
) -> list[TrajectoryRecord]:
    """n records (episode i // 2, init i % 2) from one seed; n_support=(lo, hi) varies N."""
    lo_hi = (n_support, n_support) if isinstance(n_support, int) else n_support
    keys = [(i // 2, i % 2, i) for i in range(n)]
    rng = np.random.default_rng(seed)
    return _records(rng, keys, run, T, P, lo_hi, image, domains, seed)


class SyntheticSimulator:
    """A simulator (engine.collect): shard i holds episodes [i * shard_size, ...) of `episodes`,
    `inits` records each."""

    def __init__(
        self,
        episodes: int,
        shard_size: int,
        inits: int = 1,
        T: int = 4,
        P: int = 16,
        image: tuple[int, int, int] = (1, 4, 4),
        n_support: tuple[int, int] = (2, 2),
        run: str = "syn",
        seed: int = 0,
        domains: tuple[str, ...] = ("latin", "greek"),
    ):
        if min(episodes, shard_size, inits) < 1:  # from `hyperflow bench scale` arguments
            raise ValueError(
                f"episodes, shard_size, inits must be >= 1, got {episodes, shard_size, inits}"
            )
        self.episodes, self.shard_size, self.inits = episodes, shard_size, inits
        self.args = (run, T, P, tuple(n_support), tuple(image), tuple(domains), seed)

    def shards(self) -> int:
        return -(-self.episodes // self.shard_size)

    def records(self, index: int) -> list[TrajectoryRecord]:
        lo = index * self.shard_size
        hi = min(self.episodes, lo + self.shard_size)
        assert lo < hi, f"shard {index} is past the last episode ({self.episodes})"
        keys = [(e, k, e * self.inits + k) for e in range(lo, hi) for k in range(self.inits)]
        seed = self.args[-1]
        return _records(np.random.default_rng([seed, index]), keys, *self.args[:-1], seed)
