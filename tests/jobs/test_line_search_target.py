"""What the line search is for, on a trained target (the tiny config's): a drift whose displacement
falls short of bias-tuning's endpoint on held-out episodes is stretched (a scale > 1 is chosen)
and the support loss ends lower than at the drift's own theta_T."""

from __future__ import annotations

import torch
from torch import nn

from hyperflow.adapt.hyperflow import adapt_hyperflow
from hyperflow.adapt.simulate import simulate, support_loss
from hyperflow.bias import get_theta
from hyperflow.config import load_config
from hyperflow.data import load_dataset
from hyperflow.data.episodes import EpisodeSpec, build_episode
from hyperflow.drift import Task
from hyperflow.evaluation.plan import episode_jobs
from hyperflow.model import load_target

SCALES = (1.0, 1.5, 2.0, 3.0)
FRACTION = 0.25  # of the way to bias-tuning's endpoint: the drift's step is far too short


class _ShortDrift(nn.Module):
    """Constant velocity reaching `fraction` of the way to `goal` at the horizon."""

    horizon = 5.0

    def __init__(self, theta0: torch.Tensor, goal: torch.Tensor, fraction: float):
        super().__init__()
        self.velocity = fraction * (goal - theta0) / self.horizon  # [P]

    def encode_tasks(self, supports, chunk=0, compiled=False):
        return Task(torch.zeros(len(supports), 1))

    def forward(self, theta, t, task):
        return self.velocity.expand_as(theta)


def test_a_short_drift_is_stretched_on_held_out_episodes(tiny_target):
    cfg, model = load_config("tiny"), load_target(tiny_target)
    data = load_dataset(cfg.data.dataset, model.cfg.image_size, model.cfg.channels, None)
    ec, lr = cfg.episodes, cfg.adapt.lr["bias_tuning"]
    jobs = episode_jobs(data, data.names("heldout")[:3], 1, ec.way, ec.shot, ec.query, seed=1000)
    theta0 = get_theta(model.backbone, model.layout)  # [P]
    for job in jobs:
        ep = build_episode(data, EpisodeSpec.from_json(job.spec))
        traj = simulate(model, [ep], theta0[None], torch.tensor([lr]), cfg.adapt.steps, [job.seed])
        drift = _ShortDrift(theta0, traj.theta[0, -1], FRACTION)
        plain = adapt_hyperflow(model, drift, ep, 1).theta
        searched = adapt_hyperflow(model, drift, ep, 1, scales=SCALES, seed=job.seed).theta

        d = plain - theta0  # [P] the drift's displacement
        scale = ((searched - theta0) @ d / (d @ d)).item()
        before, after = support_loss(model, ep, torch.stack([plain, searched]), job.seed).tolist()
        print(f"{job.domain}: scale {scale:.2f}, support loss {before:.4f} -> {after:.4f}")
        assert scale > 1.0, job.domain
        assert after < before, job.domain
