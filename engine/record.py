"""One trajectory record: the unit every store writes and every reader returns."""

import json
from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 1
THETA_DTYPES = ("float32", "float16")


@dataclass
class TrajectoryRecord:
    """A bias-tuning trajectory with the support set it was tuned on."""

    id: str  # make_id(run, episode, init); no dots (webdataset keys split at the first dot)
    episode: dict  # EpisodeSpec as JSON: domain, classes, support, query, shift, seed
    support: np.ndarray  # uint8 [N, C, H, W]; N may vary between records
    labels: np.ndarray  # int64 [N]
    theta: np.ndarray  # float32 or float16 [T+1, P]
    loss: np.ndarray  # float32 [T+1]
    meta: dict  # optimizer, lr, T, sigma, seed, backbone, layout_hash, schema_version, ...


def make_id(run: str, episode: int, init: int) -> str:
    """Deterministic record id, e.g. make_id("a", 123, 2) == "ra-e000123-i02"."""
    if not run or any(c in run for c in "./ \t\n"):
        raise ValueError(f"run name {run!r} must be non-empty without dots, slashes or spaces")
    if episode < 0 or init < 0:
        raise ValueError(f"episode {episode} and init {init} must be >= 0")
    return f"r{run}-e{episode:06d}-i{init:02d}"


def _json_exact(x: dict) -> bool:
    # Records must read back equal, so tuples or numpy scalars (which JSON changes) are refused.
    try:
        return json.loads(json.dumps(x)) == x
    except (TypeError, ValueError):
        return False


def validate_record(r: TrajectoryRecord) -> None:
    """Raise AssertionError naming the record and the field that breaks the schema."""
    who = f"record {r.id!r}"
    assert isinstance(r.id, str) and r.id, f"{who}: id must be a non-empty str"
    assert not any(c in r.id for c in "./ \t\n"), f"{who}: id must not contain dots/slashes/spaces"
    assert isinstance(r.episode, dict) and _json_exact(r.episode), (
        f"{who}: episode must be a dict that survives a JSON round trip"
    )
    assert isinstance(r.meta, dict) and _json_exact(r.meta), (
        f"{who}: meta must be a dict that survives a JSON round trip"
    )
    s, y, th, lo = r.support, r.labels, r.theta, r.loss
    assert isinstance(s, np.ndarray) and s.dtype == np.uint8 and s.ndim == 4 and len(s), (
        f"{who}: support must be uint8 [N>=1, C, H, W], got {getattr(s, 'dtype', type(s))} "
        f"{getattr(s, 'shape', '')}"
    )
    assert isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == (len(s),), (
        f"{who}: labels must be int64 [{len(s)}], got {getattr(y, 'dtype', type(y))} "
        f"{getattr(y, 'shape', '')}"
    )
    assert isinstance(th, np.ndarray) and th.dtype.name in THETA_DTYPES and th.ndim == 2, (
        f"{who}: theta must be float32/float16 [T+1, P], got {getattr(th, 'dtype', type(th))} "
        f"{getattr(th, 'shape', '')}"
    )
    assert isinstance(lo, np.ndarray) and lo.dtype == np.float32 and lo.shape == (len(th),), (
        f"{who}: loss must be float32 [{len(th)}] (one per theta row), got "
        f"{getattr(lo, 'dtype', type(lo))} {getattr(lo, 'shape', '')}"
    )


def record_diff(a: TrajectoryRecord, b: TrajectoryRecord) -> list[str]:
    """Names of the fields where a and b differ (arrays must match in dtype, shape and value)."""
    out = [f for f in ("id", "episode", "meta") if getattr(a, f) != getattr(b, f)]
    for f in ("support", "labels", "theta", "loss"):
        x, y = getattr(a, f), getattr(b, f)
        if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            out.append(f)
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
    """Realistic fake records for tests and benchmarks.

    theta_0 ~ N(0, 0.1); T Adam steps (lr 1e-2) on smooth per-coordinate gradients, so steps
    are ~1e-2 and correlated in time like real bias-tuning. n_support=(lo, hi) varies N.
    """
    rng = np.random.default_rng(seed)
    lo, hi = (n_support, n_support) if isinstance(n_support, int) else n_support
    out = []
    for i in range(n):
        th = rng.normal(0.0, 0.1, P)
        a, b = rng.normal(0.0, 1.0, P), rng.normal(0.0, 1.0, P)  # gradient = a + b t/T + noise
        m, v, rows, loss = np.zeros(P), np.zeros(P), [th.copy()], [2.0]
        for t in range(1, T + 1):
            g = a + b * t / T + 0.3 * rng.normal(0.0, 1.0, P)
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            th = th - 1e-2 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            rows.append(th.copy())
            loss.append(2.0 * np.exp(-t / T) + 0.01 * rng.random())
        N = int(rng.integers(lo, hi + 1))
        C, H, W = image
        # Smooth blobs plus noise: compresses like real glyph crops rather than like white noise.
        hl, wl = max(1, H // 4), max(1, W // 4)
        low = rng.integers(0, 256, (N, C, hl, wl))
        img = low[:, :, np.arange(H) * hl // H][:, :, :, np.arange(W) * wl // W]
        img = img + rng.integers(-8, 9, (N, C, H, W))
        dom = domains[i % len(domains)]
        out.append(
            TrajectoryRecord(
                id=make_id(run, i // 2, i % 2),
                episode={"domain": dom, "classes": [0, 1, 2, 3, 4], "seed": seed * 100003 + i},
                support=np.clip(img, 0, 255).astype(np.uint8),
                labels=(np.arange(N) % 5).astype(np.int64),
                theta=np.stack(rows).astype(np.float32),
                loss=np.asarray(loss, dtype=np.float32),
                meta={
                    "optimizer": "adam",
                    "lr": 0.01,
                    "T": T,
                    "sigma": 0.0,
                    "seed": seed,
                    "backbone": "synthetic",
                    "schema_version": SCHEMA_VERSION,
                },
            )
        )
    return out
