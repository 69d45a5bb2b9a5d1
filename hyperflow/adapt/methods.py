"""Gradient adaptation baselines on one episode: direct transfer, head-, bias- and full tuning.

`adapt` maps (model, episode) to an `Adapted` state and `predict` turns that into query logits
[Nq, way]; the two are separate so adaptation cost is measured without the final classification.
The gradient methods follow P>M>F: prototypes from the clean support set, loss on an augmented
copy, Adam for `steps` steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hyperflow.adapt.augment import augment
from hyperflow.adapt.episode_biases import episode_biases
from hyperflow.adapt.simulate import simulate
from hyperflow.bias import get_theta
from hyperflow.data.episodes import Episode
from hyperflow.errors import UserError
from hyperflow.model import TargetModel, cosine_logits, prototypes


@torch.no_grad()
def classify(
    model: TargetModel, episode: Episode, theta: torch.Tensor | None = None
) -> torch.Tensor:
    """Query logits [Nq, way] with biases theta [P] (None: the model's own)."""
    x = model.preprocess(torch.cat([episode.support_x, episode.query_x]))
    n = episode.support_x.shape[0]
    if theta is None:
        feats = model.features(x)
    else:
        delta = (theta - get_theta(model.backbone, model.layout)).unsqueeze(0)
        with episode_biases(model.backbone, model.layout, delta, 1):
            feats = model.features(x)
    return model.logits(feats[:n], episode.support_y, episode.way, feats[n:])


@dataclass
class Adapted:
    """What an adaptation produces; `predict` turns it into query logits."""

    theta: torch.Tensor | None = None  # [P] tuned biases (bias-tuning, HyperFlow)
    head: tuple[torch.Tensor, torch.Tensor] | None = None  # class weights [way, F], scale []
    model: TargetModel | None = None  # a fully tuned copy of the target


def predict(model: TargetModel, episode: Episode, adapted: Adapted) -> torch.Tensor:
    """Query logits [Nq, way] of an adapted model."""
    if adapted.model is not None:
        return classify(adapted.model, episode)
    if adapted.head is not None:
        weights, scale = adapted.head
        with torch.no_grad():
            query_f = model.features(model.preprocess(episode.query_x))
            return scale * cosine_logits(weights, query_f)
    return classify(model, episode, adapted.theta)


def _direct(model, episode, lr, steps, seed):
    return Adapted()


def _bias_tuning(model, episode, lr, steps, seed):
    theta0 = get_theta(model.backbone, model.layout).unsqueeze(0)
    traj = simulate(model, [episode], theta0, torch.tensor([lr]), steps, [seed])
    return Adapted(theta=traj.theta[0, -1])


def _head_tuning(model, episode, lr, steps, seed):
    # backbone frozen: tune prototype-initialised class weights [way, F] and the logit scale
    clean = model.preprocess(episode.support_x)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        support_f = model.features(clean)
    weights = prototypes(support_f, episode.support_y, episode.way).clone().requires_grad_(True)
    scale = model.logit_scale.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([weights, scale], lr=lr)
    for _ in range(steps):
        with torch.no_grad():
            aug_f = model.features(augment(clean, gen))
        loss = F.cross_entropy(scale * cosine_logits(weights, aug_f), episode.support_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Adapted(head=(weights.detach(), scale.detach()))


def _full_tuning(model, episode, lr, steps, seed):
    tuned = copy.deepcopy(model).eval()  # eval: BatchNorm keeps its running statistics
    for p in tuned.parameters():
        p.requires_grad_(True)
    tuned.logit_scale.requires_grad_(False)
    opt = torch.optim.Adam(tuned.backbone.parameters(), lr=lr)
    clean = tuned.preprocess(episode.support_x)
    n = clean.shape[0]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        feats = tuned.features(torch.cat([clean, augment(clean, gen)]))
        logits = tuned.logits(feats[:n], episode.support_y, episode.way, feats[n:])
        loss = F.cross_entropy(logits, episode.support_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Adapted(model=tuned)


Adapter = Callable[[TargetModel, Episode, float, int, int], Adapted]
GRADIENT_METHODS: dict[str, Adapter] = {
    "direct": _direct,
    "head_tuning": _head_tuning,
    "bias_tuning": _bias_tuning,
    "full_tuning": _full_tuning,
}


def adapt(
    method: str, model: TargetModel, episode: Episode, lr: float, steps: int, seed: int
) -> Adapted:
    """Adapt to the episode's support set with a gradient baseline (or not at all: direct)."""
    if method not in GRADIENT_METHODS:
        raise UserError(f"unknown method {method!r}; choose from {sorted(GRADIENT_METHODS)}")
    return GRADIENT_METHODS[method](model, episode, lr, steps, seed)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


def select_lr(
    method: str, model: TargetModel, episodes: Sequence[Episode], grid: Sequence[float], steps: int
) -> float:
    """The grid learning rate with the best mean query accuracy on validation episodes (P>M>F)."""
    if method == "direct":
        return 0.0
    best, best_acc = grid[0], -1.0
    for lr in grid:
        acc = sum(
            accuracy(predict(model, ep, adapt(method, model, ep, lr, steps, seed=i)), ep.query_y)
            for i, ep in enumerate(episodes)
        ) / len(episodes)
        if acc > best_acc:
            best, best_acc = lr, acc
    return best
