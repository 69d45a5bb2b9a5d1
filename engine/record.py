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
    """Raise ValueError naming the record and the field that breaks the schema (records come
    from any simulator, so this is input checking, not an internal invariant)."""
    who = f"record {r.id!r}"

    def require(ok: bool, need: str) -> None:
        if not ok:
            raise ValueError(f"{who}: {need}")

    # in order: each message may use what the checks before it established
    require(isinstance(r.id, str) and bool(r.id), "id must be a non-empty str")
    require(not any(c in r.id for c in "./ \t\n"), "id must not contain dots/slashes/spaces")
    require(
        isinstance(r.episode, dict) and _json_exact(r.episode),
        "episode must be a dict that survives a JSON round trip",
    )
    require(
        isinstance(r.meta, dict) and _json_exact(r.meta),
        "meta must be a dict that survives a JSON round trip",
    )
    s, y, th, lo = r.support, r.labels, r.theta, r.loss
    require(
        isinstance(s, np.ndarray) and s.dtype == np.uint8 and s.ndim == 4 and len(s) > 0,
        f"support must be uint8 [N>=1, C, H, W], got {_kind(s)}",
    )
    require(
        isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == (len(s),),
        f"labels must be int64 [{len(s)}], got {_kind(y)}",
    )
    require(
        isinstance(th, np.ndarray) and th.dtype.name in THETA_DTYPES and th.ndim == 2,
        f"theta must be float32/float16 [T+1, P], got {_kind(th)}",
    )
    require(
        isinstance(lo, np.ndarray) and lo.dtype == np.float32 and lo.shape == (len(th),),
        f"loss must be float32 [{len(th)}] (one per theta row), got {_kind(lo)}",
    )


def _kind(x) -> str:
    return f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"


def record_diff(a: TrajectoryRecord, b: TrajectoryRecord) -> list[str]:
    """Names of the fields where a and b differ (arrays must match in dtype, shape and value)."""
    out = [f for f in ("id", "episode", "meta") if getattr(a, f) != getattr(b, f)]
    for f in ("support", "labels", "theta", "loss"):
        x, y = getattr(a, f), getattr(b, f)
        if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            out.append(f)
    return out
