"""What an evaluation runs: the episodes of every domain and the method variants.

Episodes are fixed by (seed, domain index, episode index), so every method, worker count and rerun
sees the same tasks (paired comparison). Validation episodes for the learning-rate grid use a
disjoint seed range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hyperflow.adapt.methods import GRADIENT_METHODS
from hyperflow.data.dataset import Dataset
from hyperflow.data.episodes import sample_episode
from hyperflow.errors import UserError
from hyperflow.evaluation.worker import EpisodeJob, MethodSpec
from hyperflow.smat.adapt import SMAT_METHODS

HYPERFLOW_METHODS = {
    "hyperflow_linear": "linear",
    "hyperflow_pl": "piecewise_linear",
    "hyperflow_cubic": "piecewise_cubic",
}
LINE_SEARCH = "_ls"  # suffix of a HyperFlow method: line search along theta_T - theta_0
VALIDATION_OFFSET = 10_000_000  # validation episode indices never meet evaluation indices


def episode_jobs(
    data: Dataset,
    domains: list[str],
    n: int,
    way: int,
    shot: int,
    query: int,
    seed: int,
    offset: int = 0,
    shifts: tuple[str, ...] = (),
) -> list[EpisodeJob]:
    """n episodes per domain, each seeded from (seed, domain index, offset + episode index);
    with `shifts`, each episode's images get one family drawn from them, as collection's do."""
    jobs = []
    for d_idx, name in enumerate(domains):
        for i in range(offset, offset + n):
            rng = np.random.default_rng([seed, d_idx, i])
            ep_seed = int(rng.integers(2**31))
            # drawn after ep_seed: without shifts the episodes stay those of earlier runs
            shift = shifts[int(rng.integers(len(shifts)))] if shifts else None
            spec = sample_episode(data.domains[name], ep_seed, way, shot, query, shift)
            jobs.append(EpisodeJob(name, i, spec.to_json(), ep_seed))
    return jobs


def method_specs(
    names: list[str],
    lrs: dict[str, float],
    steps: int,
    drifts: dict[str, str],
    solver: str,
    solver_steps: list[int],
    chunk: int = 0,
    smat: str | None = None,
    step_scales: Sequence[float] = (1.0,),
    compiled: bool = False,
) -> list[MethodSpec]:
    """Expand method names into runnable variants; hyperflow methods once per solver step count
    (encoding the support `chunk` images at a time, 0: all at once; Euler steps compiled with
    `compiled`), each with an `_ls` twin that
    line-searches `step_scales`; SMAT methods need `smat`, the trained SMAT's location (--smat)."""
    # chunk, solver, solver_steps and step_scales were checked by the config schema
    specs = []
    for name in names:
        if name in GRADIENT_METHODS:
            specs.append(
                MethodSpec(name, name, lrs.get(name, 0.0), 0 if name == "direct" else steps)
            )
        elif base := hyperflow_base(name):
            interp = HYPERFLOW_METHODS[base]
            searched = tuple(float(x) for x in step_scales) if name != base else ()
            if interp not in drifts:
                raise UserError(
                    f"method {name!r} needs a drift network trained with interpolant {interp!r}; "
                    f"--drift provides {sorted(drifts) or 'none'}"
                )
            for k in solver_steps:
                args = (0.0, k, interp, solver, chunk, searched, compiled)
                specs.append(MethodSpec(f"{name}@{k}", "hyperflow", *args))
        elif name in SMAT_METHODS:
            if smat is None:
                raise UserError(
                    f"method {name!r} needs a trained SMAT: pass --smat DIR "
                    f"(`hyperflow train --method smat` writes one)"
                )
            # smat_finetune bias-tunes from the merge with bias-tuning's steps and lr grid
            tuned = name == "smat_finetune"
            specs.append(MethodSpec(name, name, lrs.get(name, 0.0), steps if tuned else 0))
        else:
            hyperflow = [m + ls for m in sorted(HYPERFLOW_METHODS) for ls in ("", LINE_SEARCH)]
            valid = sorted(GRADIENT_METHODS) + hyperflow + sorted(SMAT_METHODS)
            raise UserError(f"unknown method {name!r}; choose from {valid}")
    return specs


def hyperflow_base(name: str) -> str | None:
    """The HyperFlow method a name runs ("hyperflow_pl_ls" -> "hyperflow_pl"), else None."""
    base = name.removesuffix(LINE_SEARCH)
    return base if base in HYPERFLOW_METHODS else None


def interpolants_for(names: Sequence[str]) -> list[str]:
    """The drift networks (by interpolant, in first-use order) that evaluating `names` needs; an
    `_ls` method runs its plain method's drift."""
    bases = [hyperflow_base(n) for n in names]
    return list(dict.fromkeys(HYPERFLOW_METHODS[b] for b in bases if b))


def lr_candidates(names: list[str], grid: list[float], full_grid: list[float], steps: int):
    """Method variants for the learning-rate search: one per (gradient method, grid value);
    smat_finetune searches bias-tuning's grid."""
    out = []
    for name in names:
        if (name in GRADIENT_METHODS and name != "direct") or name == "smat_finetune":
            for lr in full_grid if name == "full_tuning" else grid:
                out.append(MethodSpec(f"{name}|{lr:g}", name, lr, steps))
    return out
