"""Paired bootstrap over episodes: how sure a difference between two methods is.

Every method runs on the same episodes, so the noise of an episode (a hard task, a lucky draw of
queries) is shared by all methods and cancels in their difference. Resampling episodes, not
methods, keeps that pairing: one bootstrap replicate draws episode indices with replacement
within each domain (the report weighs domains equally, so each keeps its own count), takes every
method's mean over the same drawn episodes per domain, and averages the domain means as the
report does. The 95% interval is the 2.5-97.5 percentile range of the replicates.

Recovery = (method - direct) / (bias_tuning - direct). In a replicate where bias-tuning gains
nothing the ratio has no finite value; it counts as -inf / +inf by the sign of the numerator, so an
interval reaching such replicates is open (None) on that side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% interval; lo/hi None: unbounded on that side."""

    mean: float | None
    lo: float | None
    hi: float | None

    def to_dict(self) -> dict:
        return asdict(self)

    def excludes_zero(self) -> bool:
        return (self.lo is not None and self.lo > 0) or (self.hi is not None and self.hi < 0)


def episode_table(results: dict, method: str, domains: list[str]) -> dict[str, np.ndarray]:
    """{domain: accuracies [n] in the order of (episode id)} from a method's "episodes" rows;
    KeyError if the method has none (results written before rows were kept)."""
    rows = results["methods"][method]["episodes"]
    out = {}
    for d in domains:
        mine = sorted((r["id"], r["acc"]) for r in rows if r["domain"] == d)
        out[d] = np.array([a for _, a in mine], dtype=np.float64)
    return out


def _episode_ids(results: dict, method: str, domains: list[str]) -> dict[str, list]:
    rows = results["methods"][method]["episodes"]
    return {d: sorted(r["id"] for r in rows if r["domain"] == d) for d in domains}


def has_episodes(results: dict, methods: list[str]) -> bool:
    return all("episodes" in results["methods"].get(m, {}) for m in methods)


def _same_episodes(results: list[dict], methods: list[str], domains: list[str]) -> bool:
    """Whether every one of `results` has rows of every method on one set of episodes, with at
    least one episode per domain: the condition for pairing them."""
    if not domains or not all(has_episodes(r, methods) for r in results):
        return False
    ids = _episode_ids(results[0], methods[0], domains)
    same = all(_episode_ids(r, m, domains) == ids for r in results for m in methods)
    return same and all(ids.values())


def _point(table: dict[str, np.ndarray]) -> float:
    """The report's figure: the mean over domains of the per-domain mean."""
    return float(np.mean([a.mean() for a in table.values()]))


def resampled_means(
    tables: list[dict[str, np.ndarray]], resamples: int = RESAMPLES, seed: int = SEED
) -> np.ndarray:
    """float [M, B]: for each of M methods' tables (domain -> accuracies of the same episodes in
    the same order), the mean over domains of the per-domain mean of B paired resamples."""
    domains = list(tables[0])
    rng = np.random.default_rng(seed)
    total = np.zeros((len(tables), resamples))
    for d in domains:  # the same draw for every method: that is the pairing
        n = len(tables[0][d])
        assert n > 0 and all(len(t[d]) == n for t in tables), f"unpaired episodes on {d}"
        idx = rng.integers(0, n, size=(resamples, n))  # [B, n]
        for m, t in enumerate(tables):
            total[m] += t[d][idx].mean(axis=1)
    return total / len(domains)


def _interval(point: float, samples: np.ndarray) -> Interval:
    with np.errstate(invalid="ignore"):  # inf - inf between unbounded replicates
        lo, hi = np.percentile(samples, [2.5, 97.5])
    finite = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
    return Interval(finite(point), finite(lo), finite(hi))


def _recovery(diff: np.ndarray, gain: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = diff / gain
    unbounded = np.where(diff >= 0, np.inf, -np.inf)
    # bias-tuning gains nothing: no finite share; a method equal to direct recovers 0 of it
    ratio = np.where(gain > 0, ratio, unbounded)
    return np.where((gain <= 0) & (diff == 0), 0.0, ratio)


def paired_intervals(
    results: dict,
    method: str,
    domains: list[str],
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Interval] | None:
    """{"diff": method - direct, "recovery": share of bias-tuning's gain} over `domains` (mean of
    domain means), each with its paired 95% interval; None when any of the three methods lacks
    per-episode rows or they are not the same episodes."""
    names = ["direct", "bias_tuning", method]
    if not _same_episodes([results], names, domains):
        return None
    tables = [episode_table(results, m, domains) for m in names]
    direct, bias, mine = resampled_means(tables, resamples, seed)
    d0, b0, m0 = map(_point, tables)
    return {
        "diff": _interval(m0 - d0, mine - direct),
        "recovery": _interval(
            float(_recovery(np.array(m0 - d0), np.array(b0 - d0))),
            _recovery(mine - direct, bias - direct),
        ),
    }


def recovery_change(
    first: dict,
    last: dict,
    method: str,
    domains: list[str],
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval | None:
    """`method`'s recovery in results `last` minus its recovery in results `first` over `domains`,
    with its paired 95% interval: e.g. two points of a sweep, which copy one set of baselines onto
    the same episodes, so one draw of episodes serves all four tables (direct, bias_tuning and the
    method in each). None when rows are missing, the episodes differ or the baselines differ."""
    names = ["direct", "bias_tuning", method]
    if not _same_episodes([first, last], names, domains):
        return None
    direct, bias = (episode_table(first, m, domains) for m in names[:2])
    for m, table in (("direct", direct), ("bias_tuning", bias)):
        theirs = episode_table(last, m, domains)
        if any(not np.array_equal(table[d], theirs[d]) for d in domains):
            return None  # not the same baselines: the difference would not be paired
    tables = [
        direct,
        bias,
        episode_table(first, method, domains),
        episode_table(last, method, domains),
    ]
    d, b, a, z = resampled_means(tables, resamples, seed)
    d0, b0, a0, z0 = map(_point, tables)
    gain = np.array(b0 - d0)
    with np.errstate(invalid="ignore"):  # inf - inf where bias-tuning gains nothing
        point = _recovery(np.array(z0 - d0), gain) - _recovery(np.array(a0 - d0), gain)
        samples = _recovery(z - d, b - d) - _recovery(a - d, b - d)
    return _interval(float(point), samples)
