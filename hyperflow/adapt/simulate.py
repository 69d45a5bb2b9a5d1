"""Bias-tuning trajectories: the simulator the data engine runs and the bias-tuning baseline.

P>M>F protocol per step: prototypes from the clean support set, cross-entropy of the augmented
support copy against them, Adam on theta only. The loss is recorded at every knot theta_0..theta_T.

`simulate` tunes E episodes in one call (one folded forward per step, see episode_biases); Adam is
elementwise, so one Adam over theta [E, P] with per-episode learning rates is E independent Adams.
`simulate_loop` is the plain per-episode reference (functional_call + torch.optim.Adam); a test
holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from hyperflow.adapt.augment import augment
from hyperflow.adapt.episode_biases import episode_biases
from hyperflow.bias import get_theta
from hyperflow.data.episodes import Episode
from hyperflow.model import TargetModel, cosine_logits, prototypes

_BETAS, _EPS = (0.9, 0.999), 1e-8


@dataclass
class Trajectories:
    theta: torch.Tensor  # [E, T+1, P] float32, knots at t = 0..T
    loss: torch.Tensor  # [E, T+1] support loss at each knot


def initial_theta(model: TargetModel, n: int, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """n starting points [n, P] on the model's device: the pretrained biases plus Gaussian noise
    of std sigma (drawn on the CPU from `gen`, so every device starts from the same points)."""
    theta = get_theta(model.backbone, model.layout).unsqueeze(0).repeat(n, 1)
    if sigma > 0:
        noise = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        theta = theta + sigma * noise.to(theta.device)
    return theta


def simulate(
    model: TargetModel,
    episodes: list[Episode],
    theta0: torch.Tensor,
    lr: torch.Tensor,
    steps: int,
    seeds: list[int],
) -> Trajectories:
    """Bias-tune every episode from theta0 [E, P] with Adam at lr [E] for `steps` steps.

    seeds[e] seeds episode e's augmentations. Episodes of different support sizes are run in
    groups of equal size (rows must fold evenly); the result keeps the input order. Runs on the
    model's device (episodes and theta0 are moved there); the result is on the CPU.
    """
    assert len(episodes) == theta0.shape[0] == lr.shape[0] == len(seeds), "one theta/lr/seed each"
    groups: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        groups.setdefault(ep.support_x.shape[0], []).append(i)
    theta = torch.empty(len(episodes), steps + 1, model.layout.size, dtype=theta0.dtype)
    loss = torch.empty(len(episodes), steps + 1, dtype=theta0.dtype)
    for idx in groups.values():
        th, lo = _simulate_group(
            model, [episodes[i] for i in idx], theta0[idx], lr[idx], steps, [seeds[i] for i in idx]
        )
        theta[idx], loss[idx] = th.cpu(), lo.cpu()
    return Trajectories(theta, loss)


def _simulate_group(model, episodes, theta0, lr, steps, seeds):
    E, P = theta0.shape
    base = get_theta(model.backbone, model.layout)  # [P] the biases the backbone holds
    dev = base.device
    clean = torch.stack([model.preprocess(ep.support_x.to(dev)) for ep in episodes]).to(base.dtype)
    # clean: [E, N, C, H, W] in the model's dtype (float64 models give exact equivalence tests)
    labels = torch.stack([ep.support_y for ep in episodes]).to(dev)  # [E, N]
    theta0, lr = theta0.to(dev), lr.to(dev, base.dtype)
    ways = [ep.way for ep in episodes]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    theta = theta0.clone()
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    knots, losses = [theta.clone()], []
    model.eval()
    for step in range(steps + 1):
        aug = torch.stack([augment(clean[e], gens[e]) for e in range(E)])
        delta = (theta - base).requires_grad_(True)
        per_episode = _folded_loss(model, delta, clean, aug, labels, ways)  # [E]
        losses.append(per_episode.detach())
        if step == steps:
            break
        (grad,) = torch.autograd.grad(per_episode.sum(), delta)
        theta = _adam_step(theta, grad, m, v, lr, step + 1)
        knots.append(theta.clone())
    return torch.stack(knots, 1), torch.stack(losses, 1)


def _folded_loss(model, delta, clean, aug, labels, ways) -> torch.Tensor:
    E, N = labels.shape
    x = torch.cat([clean, aug], 1).flatten(0, 1)  # [E*2N, C, H, W], episode-major
    with episode_biases(model.backbone, model.layout, delta, E):
        feats = model.features(x).view(E, 2 * N, -1)
    out = []
    for e in range(E):  # the head is tiny; a loop keeps any way per episode
        protos = prototypes(feats[e, :N], labels[e], ways[e])
        logits = model.logit_scale * cosine_logits(protos, feats[e, N:])
        out.append(F.cross_entropy(logits, labels[e]))
    return torch.stack(out)


@torch.no_grad()
def support_loss(
    model: TargetModel, episode: Episode, thetas: torch.Tensor, seed: int
) -> torch.Tensor:
    """The simulator's support loss of one episode at each of thetas [B, P] -> [B].

    One augmented copy drawn from `seed` serves every theta, so the values are comparable.
    """
    B = thetas.shape[0]
    base = get_theta(model.backbone, model.layout)
    clean = model.preprocess(episode.support_x).to(base.dtype)
    aug = augment(clean, torch.Generator().manual_seed(seed))
    labels = episode.support_y.unsqueeze(0).expand(B, -1)
    clean, aug = (x.unsqueeze(0).expand(B, *x.shape) for x in (clean, aug))  # [B, N, C, H, W]
    return _folded_loss(model, thetas - base, clean, aug, labels, [episode.way] * B)


def _adam_step(theta, grad, m, v, lr, t):
    m.mul_(_BETAS[0]).add_(grad, alpha=1 - _BETAS[0])
    v.mul_(_BETAS[1]).addcmul_(grad, grad, value=1 - _BETAS[1])
    m_hat = m / (1 - _BETAS[0] ** t)
    v_hat = v / (1 - _BETAS[1] ** t)
    return theta - lr.unsqueeze(1) * m_hat / (v_hat.sqrt() + _EPS)


def simulate_loop(
    model: TargetModel, episode: Episode, theta0: torch.Tensor, lr: float, steps: int, seed: int
) -> Trajectories:
    """Per-episode reference: functional_call on the backbone and torch.optim.Adam on theta [P]."""
    params = dict(model.backbone.named_parameters())
    buffers = dict(model.backbone.named_buffers())
    clean = model.preprocess(episode.support_x).to(theta0.dtype)
    n = clean.shape[0]
    gen = torch.Generator().manual_seed(seed)
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr, betas=_BETAS, eps=_EPS)
    knots, losses = [theta0.clone()], []
    for step in range(steps + 1):
        aug = augment(clean, gen)
        p = {k: v.detach() for k, v in params.items()}
        p.update(model.layout.split(theta))
        feats = functional_call(model.backbone, (p, buffers), (torch.cat([clean, aug]),))
        protos = prototypes(feats[:n], episode.support_y, episode.way)
        logits = model.logit_scale.detach() * cosine_logits(protos, feats[n:])
        loss = F.cross_entropy(logits, episode.support_y)
        losses.append(loss.detach())
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        knots.append(theta.detach().clone())
    return Trajectories(torch.stack(knots).unsqueeze(0), torch.stack(losses).unsqueeze(0))
