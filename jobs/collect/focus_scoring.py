"""Scoring active collection's candidate episodes on Ray actors (hyperflow.focus.FocusScorer).

The scoring itself lives with the method (hyperflow/focus.py); this is the orchestration: chunks
of candidates through a ResilientPool, so a dying actor's chunk is redone by a replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.pool import ResilientPool
from hyperflow.focus import FocusScorer

CHUNK = 8  # candidates per actor task: a few seconds each, fine-grained enough to balance


def score_episodes(
    indices: Sequence[int],
    scorer_kwargs: dict,
    workers: int,
    num_cpus: float = 1,
    num_gpus: float = 0,
    placement_timeout: float = 300.0,
    replace_fraction: float = 0.25,
    progress: Callable[[int], None] | None = None,
) -> dict[int, dict]:
    """Score candidate episodes on `workers` Ray actors (FocusScorer keyword arguments in
    `scorer_kwargs`; Ray must be connected): index -> {"index", "score", "shift"}.
    progress(n) is called as each chunk of n candidates lands."""
    indices = list(indices)
    chunks = [indices[i : i + CHUNK] for i in range(0, len(indices), CHUNK)]
    pool = ResilientPool(
        FocusScorer,
        min(workers, len(chunks)),
        scorer_kwargs,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        placement_timeout=placement_timeout,
        replace_fraction=replace_fraction,
    )
    rows: dict[int, dict] = {}
    try:
        for chunk, result in pool.map_unordered("score", chunks):
            rows.update((r["index"], r) for r in result)
            if progress:
                progress(len(chunk))
    finally:
        pool.shutdown()
    return rows
