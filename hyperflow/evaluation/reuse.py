"""Baselines computed once: take methods from a previous results.json whose inputs did not change.

A sweep over drift networks (the scaling curve) evaluates the same episodes again and again; the
gradient baselines on them depend only on the target, the episodes and their learning rate, so
`hyperflow evaluate --reuse PREVIOUS` copies their entries instead of re-running them. What must
match is checked, not assumed: the target's weights (digest), the dataset, the episodes (seed,
count per domain, way, shot, shifts) and the domains; a mismatch is an error naming the field.
The per-episode rows come along (paired intervals need them) and must name exactly the episodes
of this evaluation (domain, index, seed); results written before rows were kept are still
copied, without paired intervals.
"""

from __future__ import annotations

import json

from engine.storage import location
from hyperflow.adapt.methods import GRADIENT_METHODS
from hyperflow.errors import UserError

# header fields that fix the episodes every method is evaluated on
EPISODE_FIELDS = ("dataset", "target_id", "seed", "episodes_per_domain", "way", "shot", "shifts")


def check_same_episodes(reused: dict, jobs: list, path: str) -> list[str]:
    """UserError unless every reused method's per-episode rows are exactly `jobs` (EpisodeJobs:
    domain, index, seed); returns the reused methods that have no rows (older results)."""
    want = sorted((j.domain, j.index, j.seed) for j in jobs)
    missing = []
    for name, entry in reused.items():
        if "episodes" not in entry:
            missing.append(name)
            continue
        got = sorted((r["domain"], r["id"], r["seed"]) for r in entry["episodes"])
        if got != want:
            extra = sorted(set(got) - set(want))[:3]
            lacking = sorted(set(want) - set(got))[:3]
            raise UserError(
                f"--reuse {path!r}: the per-episode rows of {name} are not this evaluation's "
                f"episodes ({len(got)} rows, {len(want)} episodes; not evaluated here: {extra}, "
                f"absent there: {lacking})"
            )
    return missing


def load_reusable(path: str, header: dict, domains: list[str], wanted: list[str]) -> dict:
    """{method name: results entry} of the gradient baselines among `wanted` (result names, e.g.
    "bias_tuning") that the results.json at `path` (a file, or a directory holding one) has for
    exactly these episodes; `header` is this evaluation's results header."""
    loc = location(path)
    key = "results.json"
    if loc.exists(key):
        raw = loc.read_bytes(key)
    else:  # the path of the file itself
        parent, _, name = loc.url.rstrip("/").rpartition("/")
        if not name or not location(parent).exists(name):
            raise UserError(f"--reuse {path!r} is neither a results.json nor a directory with one")
        raw = location(parent).read_bytes(name)
    previous = json.loads(raw)
    if "target_id" not in previous:  # written before results recorded the target's digest
        previous["target_id"] = (
            header["target_id"] if previous.get("target") == header.get("target") else None
        )
    for field in EPISODE_FIELDS:
        if previous.get(field) != header.get(field):
            raise UserError(
                f"--reuse {path!r} was evaluated with {field}={previous.get(field)!r}, this "
                f"evaluation has {field}={header.get(field)!r}: its results are for other "
                "episodes or another target"
            )
    if sorted(previous.get("domains", {})) != sorted(domains):
        raise UserError(
            f"--reuse {path!r} covers domains {sorted(previous.get('domains', {}))}, this "
            f"evaluation {sorted(domains)}"
        )
    return {
        name: entry
        for name, entry in previous["methods"].items()
        if name in wanted and name in GRADIENT_METHODS
    }
