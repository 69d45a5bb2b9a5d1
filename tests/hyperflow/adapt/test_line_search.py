"""Forward-only step-size control: the line search along theta_T - theta_0 finds the better scale
when the drift falls short, never ends above plain HyperFlow's support loss (s = 1 in the grid),
scores with the loss bias-tuning minimises, and never runs backward."""

from __future__ import annotations

import math

import torch
from torch import nn

from hyperflow.adapt.hyperflow import adapt_hyperflow
from hyperflow.adapt.line_search import best_on_line
from hyperflow.adapt.simulate import simulate, support_loss
from hyperflow.bias import get_theta
from hyperflow.drift import DriftConfig, DriftNet, Task
from hyperflow.evaluation.worker import MethodSpec

HORIZON = 5.0
SCALES = (1.0, 1.5, 2.0, 3.0)


class _TowardsDrift(nn.Module):
    """Constant velocity `fraction` of the way to `goal` over [0, horizon]: a drift whose
    displacement is deliberately too short when fraction < 1."""

    horizon = HORIZON

    def __init__(self, theta0: torch.Tensor, goal: torch.Tensor, fraction: float):
        super().__init__()
        self.velocity = fraction * (goal - theta0) / HORIZON  # [P]

    def encode_tasks(self, supports, chunk=0, compiled=False):
        return Task(torch.zeros(len(supports), 1))

    def forward(self, theta, t, task):
        return self.velocity.expand_as(theta)


def _distance_to(goal: torch.Tensor):
    return lambda thetas: ((thetas - goal) ** 2).sum(-1)  # [K, P] -> [K]


def test_quadratic_minimum_at_twice_the_displacement_is_found():
    gen = torch.Generator().manual_seed(0)
    theta0, theta_t = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    goal = theta0 + 2 * (theta_t - theta0)  # the loss is minimal at s = 2
    theta, k, losses = best_on_line(theta0, theta_t, SCALES, _distance_to(goal))
    assert SCALES[k] == 2.0 and losses.shape == (4,)
    torch.testing.assert_close(theta, goal)


def test_never_above_the_plain_endpoint_and_nan_is_never_chosen():
    gen = torch.Generator().manual_seed(1)
    theta0, theta_t = torch.zeros(20), torch.randn(20, generator=gen)
    for _ in range(20):  # random quadratics: the minimum may sit anywhere, s = 1 included
        loss = _distance_to(3 * torch.randn(20, generator=gen))
        theta = best_on_line(theta0, theta_t, SCALES, loss)[0]
        assert loss(theta) <= loss(theta_t)
    nan_at_three = lambda th: torch.tensor([1.0, 0.5, 0.7, math.nan])  # noqa: E731
    assert best_on_line(theta0, theta_t, SCALES, nan_at_three)[1] == 1


def test_scores_are_bias_tunings_support_loss(tiny_model, episodes):
    # the loss simulate records at step 0 (what bias-tuning's first Adam step descends), same seed;
    # that a short drift is stretched on a trained target: tests/jobs/test_evaluate.py
    model, ep, seed = tiny_model, episodes[0], 7
    theta0 = get_theta(model.backbone, model.layout)
    goal = theta0 + 0.3 * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(0))
    drift = _TowardsDrift(theta0, goal, fraction=0.5)
    plain = adapt_hyperflow(model, drift, ep, 1).theta
    searched = adapt_hyperflow(model, drift, ep, 1, scales=SCALES, seed=seed).theta

    thetas = theta0 + torch.tensor(SCALES)[:, None] * (plain - theta0)  # [K, P]
    zero_lr = torch.zeros(len(SCALES))
    bias_tuning_loss = simulate(model, [ep] * 4, thetas, zero_lr, 0, [seed] * 4).loss[:, 0]
    torch.testing.assert_close(support_loss(model, ep, thetas, seed), bias_tuning_loss)
    torch.testing.assert_close(searched, thetas[bias_tuning_loss.argmin()])
    assert bias_tuning_loss.min() <= bias_tuning_loss[0], "never above plain HyperFlow (s = 1)"


def test_no_backward_and_the_forward_count_is_reported(tiny_model, episodes, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the line search must not run backward")

    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    model, ep = tiny_model, episodes[1]
    net = DriftNet(
        model.layout,
        DriftConfig("small", "target", "linear"),
        model.backbone,
        model.feature_dim,
        HORIZON,
    ).eval()
    images = []

    def no_autograd(module, inputs, output):
        # every target forward, encoder and line search alike: nothing could be differentiated
        assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
        assert not output.requires_grad
        images.append(inputs[0].shape[0])

    handle = model.backbone.register_forward_hook(no_autograd)
    try:
        theta = adapt_hyperflow(model, net, ep, 2, chunk=4, scales=SCALES, seed=3).theta
    finally:
        handle.remove()
    assert not theta.requires_grad
    # support-set passes made = what results.json reports: 1 encoder pass (in chunks of 4
    # images) + clean and augmented copies at each of the 4 scales
    spec = MethodSpec("hyperflow_linear_ls@2", "hyperflow", steps=2, chunk=4, scales=SCALES)
    assert sum(images) / ep.support_x.shape[0] == spec.support_forwards() == 9
