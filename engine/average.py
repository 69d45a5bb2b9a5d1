"""One trajectory per episode: the mean of its inits' bias-tuning runs.

`hyperflow collect` runs every episode `collect.inits` times; with collect.sigma = 0 the runs start
from the same theta_0 and differ only in their augmentation draws. Measured on the procedural
store they still end 0.83-0.91 as far apart as they moved (docs/scaling.md, "the noise in the
target"), and that disagreement is ~40% of the drift's training loss: no conditioning on the task
can predict it. The mean path of k runs estimates the expected path with 1/k of that variance,
and every interpolant is linear in its knots, so a drift trained on it regresses onto the mean of
the runs' velocities at every t.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import numpy as np

from engine.record import TrajectoryRecord

_INIT = re.compile(r"^(?P<episode>.+)-i(?P<init>\d+)$")  # make_id's "-i<init>" suffix


def average_inits(records: Iterable[TrajectoryRecord], inits: int) -> Iterator[TrajectoryRecord]:
    """Records in collect's order (each episode's `inits` records together) -> one record per
    episode: theta [T+1, P] and loss [T+1] averaged over its runs, its support and spec as they
    are (identical across the runs), meta keys whose values differ across the runs as lists, and
    meta["averaged"] the runs' ids. ValueError naming the record for anything else."""
    if inits < 2:
        raise ValueError(f"inits must be >= 2 to average, got {inits}")
    group: list[TrajectoryRecord] = []
    key = None  # the episode part of the group's ids
    for r in records:
        match = _INIT.match(r.id)
        if match is None:
            raise ValueError(f"record {r.id!r}: not an id of make_id(run, episode, init)")
        if group and match["episode"] != key:
            yield _mean(group, key, inits)
            group = []
        group.append(r)
        key = match["episode"]
    if group:
        yield _mean(group, key, inits)


def _mean(group: list[TrajectoryRecord], episode: str, inits: int) -> TrajectoryRecord:
    first, ids = group[0], [r.id for r in group]
    if len(group) != inits:
        raise ValueError(f"records {ids}: {len(group)} runs of one episode together, not {inits}")
    for r in group[1:]:
        same = (
            r.episode == first.episode
            and np.array_equal(r.support, first.support)
            and np.array_equal(r.labels, first.labels)
            and r.theta.shape == first.theta.shape
        )
        if not same:
            raise ValueError(f"record {r.id!r}: not the support set and spec of {first.id!r}")
    theta = np.mean([r.theta.astype(np.float64) for r in group], axis=0)  # [T+1, P]
    loss = np.mean([r.loss.astype(np.float64) for r in group], axis=0)  # [T+1]
    meta = {}
    for key in first.meta:
        values = [r.meta.get(key) for r in group]
        meta[key] = values[0] if all(v == values[0] for v in values) else values
    meta["averaged"] = ids
    return TrajectoryRecord(
        id=f"{episode}-m{inits:02d}",  # "ra-e000123" -> "ra-e000123-m02": the mean of 2 runs
        episode=first.episode,
        support=first.support,
        labels=first.labels,
        theta=theta.astype(np.float32),
        loss=loss.astype(np.float32),
        meta=meta,
    )
