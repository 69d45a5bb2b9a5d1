"""The evaluator's two SMAT methods on one episode, as `Adapted` states like every other method.

`smat`: the zero-shot merge, one forward pass of the support set through the frozen target and no
backward. `smat_finetune`: that merge as the starting point of bias-tuning (the same simulator,
steps and learning-rate grid as the `bias_tuning` baseline), so its gain over `bias_tuning`
measures what SMAT's starting point is worth to the gradient method.
"""

from __future__ import annotations

import torch

from hyperflow.adapt.methods import Adapted
from hyperflow.adapt.simulate import simulate
from hyperflow.data.episodes import Episode
from hyperflow.model import TargetModel
from hyperflow.smat.model import Smat

SMAT_METHODS = ("smat", "smat_finetune")


def adapt_smat(model: TargetModel, smat: Smat, episode: Episode) -> Adapted:
    """Zero-shot merge: theta = theta_pre + sum_m alpha_m(support) (z_m * theta_delta)."""
    return Adapted(theta=smat.adapted_theta(model, episode.support_x, episode.support_y))


def adapt_smat_finetune(
    model: TargetModel, smat: Smat, episode: Episode, lr: float, steps: int, seed: int
) -> Adapted:
    """The zero-shot merge, then `steps` Adam steps of bias-tuning at `lr` from it."""
    theta0 = adapt_smat(model, smat, episode).theta.unsqueeze(0)  # [1, P]
    traj = simulate(model, [episode], theta0, torch.tensor([lr]), steps, [seed])
    return Adapted(theta=traj.theta[0, -1].to(theta0.device))  # simulate returns on the CPU
