"""Active collection's scoring: where does a drift network adapt badly? Forward passes only.

A candidate episode e is drawn by the collection simulator itself, so from the collect spec's
domains and shifts only. Its score (collect.focus_score) compares the simulator's support loss L
at HyperFlow's endpoint theta_HF with another point, all on one augmented copy of the support set
seeded by (spec seed, e):

  ratio  L(theta_HF) / L(theta_0), theta_0 the target's own biases: forward passes only. High
         where the drift lowers the loss little or raises it, which includes easy episodes
         where there was little to lower (measured: it picks clean and mild shifts).
  gap    L(theta_HF) - L(theta_BT), theta_BT the endpoint of a simulated bias-tuning run (the
         episode's lr, T steps; one backward pass per step, as collection pays): how much
         of what bias-tuning reaches the drift misses.

A high score means the drift is wrong there, and bias-tuning trajectories of such episodes are
the data it lacks. Scores depend on nothing but (spec, drift, steps, score, e), so any actor can
score any chunk; jobs/collect/focus.py runs FocusScorer on Ray actors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_FOCUS_STREAM = 3  # the augmentation seed's random stream, apart from the simulator's (1, 2)
SCORES = ("ratio", "gap")  # collect.focus_score, see the module docstring


def focus_seed(spec_seed: int, e: int) -> int:
    """The augmentation seed of candidate e's support loss."""
    return int(np.random.default_rng([spec_seed, e, _FOCUS_STREAM]).integers(2**62))


class FocusScorer:
    """Ray actor (or plain object): the collection simulator (target, dataset, episode draws)
    and the drift network, loaded once; `score(indices)` scores candidate episodes."""

    def __init__(
        self,
        simulator_kwargs: dict,
        drift_dir: str,
        steps: int,
        threads: int = 1,
        score: str = "ratio",
    ):
        import torch  # here, not at the top: the driver imports this module for choose()

        from hyperflow.adapt.hyperflow import load_for_target
        from hyperflow.simulator import BiasTuningSimulator

        torch.set_num_threads(threads)
        self.sim = BiasTuningSimulator(**simulator_kwargs)
        self.net = load_for_target(drift_dir, self.sim.model).to(self.sim.device)
        assert score in SCORES, f"focus score {score!r} not in {SCORES}"
        self.steps, self.mode = steps, score

    def ready(self) -> bool:
        return True

    def score(self, indices: Sequence[int]) -> list[dict]:
        """{"index", "score", "shift"} of each candidate episode, in the given order."""
        import torch

        from hyperflow.adapt.hyperflow import adapted_theta
        from hyperflow.adapt.simulate import simulate, support_loss
        from hyperflow.bias import get_theta
        from hyperflow.data.episodes import build_episode

        model, out = self.sim.model, []
        theta0 = get_theta(model.backbone, model.layout)  # [P]
        for e in indices:
            spec, lr, _rng = self.sim.episode(e)
            ep = build_episode(self.sim.data, spec).to(self.sim.device)
            theta_hf = adapted_theta(model, self.net, ep, self.steps, "euler")  # [P]
            seed = focus_seed(self.sim.spec.seed, e)
            if self.mode == "gap":
                T, lrs = self.sim.spec.steps, torch.tensor([lr])
                bt = simulate(model, [ep], theta0[None], lrs, T, [seed]).theta[0, -1]  # [P]
                loss = support_loss(model, ep, torch.stack([theta_hf, bt.to(theta0)]), seed)
                score = float(loss[0] - loss[1])
            else:
                loss = support_loss(model, ep, torch.stack([theta0, theta_hf]), seed)  # [2]
                score = float(loss[1] / loss[0])
            # a non-finite ratio (a diverging drift) is as wrong as it gets: rank it first
            score = score if math.isfinite(score) else math.inf
            out.append({"index": e, "score": score, "shift": spec.shift or "clean"})
        return out


def choose(scores: dict[int, float], n: int) -> list[int]:
    """The n indices of highest score (ties: the lower index first), in ascending order."""
    ranked = sorted(scores, key=lambda e: (-scores[e], e))
    return sorted(ranked[:n])


def summarize(rows: Sequence[dict]) -> dict:
    """Mean/median/min/max score and the shift-family counts of scored candidates."""
    s = np.array([r["score"] for r in rows], dtype=np.float64)
    shifts: dict[str, int] = {}
    for r in rows:
        shifts[r["shift"]] = shifts.get(r["shift"], 0) + 1
    return {
        "n": len(rows),
        "mean": float(s.mean()),
        "median": float(np.median(s)),
        "min": float(s.min()),
        "max": float(s.max()),
        "shifts": dict(sorted(shifts.items())),
    }
