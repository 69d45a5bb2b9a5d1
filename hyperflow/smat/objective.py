"""SMAT meta-training objective for a batch of episodes with dense bias-tuned teachers.

loss = CE(student) + kd_weight * KD(teacher -> student) + sparsity penalty, where the student runs
the target at SMAT's merged biases and the teacher at theta_T, the endpoint of the bias-tuning
trajectory stored for the episode: KD = KL(softmax(t / T) || softmax(s / T)) * T^2 per row.

Where the loss is measured. A trajectory record holds only the support set (images, labels) and
theta [T+1, P], no query images. Without a query set we use the simulator's own P>M>F protocol
(hyperflow/adapt/simulate.py `_folded_loss`): prototypes from the clean support set, logits of
an augmented copy of it (hyperflow/adapt/augment.py). That is exactly the loss theta_T was tuned
on, so teacher and student are compared on the inputs that define the teacher. It does not let
SMAT memorise an episode the way an inner loop could: all SMAT parameters are shared across
tasks, and the only per-task freedom is alpha [M] read from the support set. (The paper measures
CE/KD on a held-out query set; a pseudo-support/query split would leave 1-shot classes without a
prototype and the teacher was tuned on those images anyway.) When an episode does carry query
images (`SmatEpisode.query_x`), the loss is measured on them instead, prototypes still from the
clean support set.

The paper splits its KD between the one-step-tuned teacher and the pretrained model (half each)
and weights (1 - lam) CE + lam KD; we distil from theta_T only, and kd_weight = lam / (1 - lam).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperflow.adapt.augment import augment
from hyperflow.adapt.episode_biases import episode_biases
from hyperflow.bias import get_theta
from hyperflow.model import TargetModel, cosine_logits, prototypes
from hyperflow.smat.model import Smat


@dataclass
class SmatEpisode:
    """One training task: the support set, its dense teacher and, optionally, a query set."""

    support_x: Tensor  # uint8 [N, C, H, W]
    support_y: Tensor  # int64 [N], 0..way-1
    teacher: Tensor  # [P] bias-tuned endpoint theta_T
    query_x: Tensor | None = None  # uint8 [Q, C, H, W]
    query_y: Tensor | None = None  # int64 [Q]

    @property
    def way(self) -> int:
        return int(self.support_y.max()) + 1

    @classmethod
    def from_record(cls, record) -> SmatEpisode:
        """From a trajectory record (engine.record.TrajectoryRecord: support, labels, theta)."""
        theta = torch.as_tensor(np.asarray(record.theta[-1], dtype=np.float32))  # [P], float16 ok
        return cls(torch.as_tensor(record.support), torch.as_tensor(record.labels), theta)


@dataclass
class SmatLoss:
    total: Tensor  # scalar, what to backpropagate
    ce: Tensor  # scalar, mean over episodes
    kd: Tensor  # scalar, mean over episodes (unweighted)
    sparsity: Tensor  # scalar penalty
    density: Tensor  # [M] expected share of non-zero gates (= the eval share to 1/P), detached


def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, mean over rows; logits [R, way]."""
    t = F.log_softmax(teacher / temperature, dim=-1)
    s = F.log_softmax(student / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * temperature**2


def smat_loss(
    model: TargetModel, smat: Smat, episodes: list[SmatEpisode], generator: torch.Generator
) -> SmatLoss:
    """The meta-training loss of `smat` over `episodes` on the frozen target `model` (eval mode).

    `generator` (CPU) draws the gates (once per call) and every augmented copy. In training mode
    the gates' log_alpha are clipped first and the sparsity multiplier takes its ascent step (as
    the paper clips at the start of each forward). Gradients reach only SMAT's parameters.
    """
    assert not model.training, "the target must be frozen: call model.eval() (BatchNorm stats)"
    assert episodes, "need at least one episode"
    cfg = smat.cfg
    if smat.training:
        smat.gates.clip_()
    base = get_theta(model.backbone, model.layout)  # [P] pretrained biases = theta_pre
    z = smat.gates(generator)  # [M, P], one draw for the whole batch
    # equal support and query sizes fold into one forward (episode_biases needs equal rows)
    groups: dict[tuple, list[SmatEpisode]] = {}
    for ep in episodes:
        q = None if ep.query_x is None else ep.query_x.shape[0]
        groups.setdefault((ep.support_x.shape[0], q), []).append(ep)
    ce, kd = [], []
    with _frozen(model):
        for group in groups.values():
            c, k = _group_losses(model, smat, group, base, z, generator)
            ce.append(c)
            kd.append(k)
    ce_mean, kd_mean = torch.cat(ce).mean(), torch.cat(kd).mean()
    penalty = smat.gates.penalty(cfg.tau, cfg.penalty_rho, cfg.penalty_rate)
    total = ce_mean + cfg.kd_weight * kd_mean + penalty
    return SmatLoss(total, ce_mean, kd_mean, penalty, smat.gates.expected_density().detach())


class SmatObjective(nn.Module):
    """`smat_loss` as one module forward, for DDP / Accelerate: only SMAT's parameters are
    registered (the frozen target is held, not owned, so DDP never waits for its gradients and
    `.to()` / `state_dict()` see SMAT alone; put the target on the same device yourself)."""

    def __init__(self, model: TargetModel, smat: Smat):
        super().__init__()
        self.smat = smat
        object.__setattr__(self, "target", model)  # not a submodule

    def forward(self, episodes: list[SmatEpisode], generator: torch.Generator) -> SmatLoss:
        return smat_loss(self.target, self.smat, episodes, generator)


def _group_losses(model, smat, group, base, z, generator) -> tuple[Tensor, Tensor]:
    E, dev, dtype = len(group), base.device, base.dtype
    clean = torch.stack([model.preprocess(ep.support_x.to(dev)) for ep in group]).to(dtype)
    labels = torch.stack([ep.support_y for ep in group]).to(dev)  # [E, N]
    if group[0].query_x is None:  # P>M>F: loss on an augmented copy of the support set
        scored = torch.stack([augment(clean[e], generator) for e in range(E)])  # [E, N, C, H, W]
        scored_y = labels
    else:
        scored = torch.stack([model.preprocess(ep.query_x.to(dev)) for ep in group]).to(dtype)
        scored_y = torch.stack([ep.query_y for ep in group]).to(dev)  # [E, Q]
    ways = [ep.way for ep in group]
    with torch.no_grad():
        # router input: support features of the frozen target at its own biases (no hooks)
        feats = model.features(clean.flatten(0, 1))  # [E*N, F]
        teacher = torch.stack([ep.teacher.to(dev, dtype) for ep in group])  # [E, P]
        t_logits = _logits(model, teacher - base, clean, scored, labels, ways)
    alpha = smat.merging_weights(feats, list(labels))  # [E, M]
    theta = smat.merged_theta(base, alpha, z)  # [E, P]
    s_logits = _logits(model, theta - base, clean, scored, labels, ways)
    ce = torch.stack([F.cross_entropy(s, y) for s, y in zip(s_logits, scored_y)])  # [E]
    kd = torch.stack(
        [kd_loss(s, t, smat.cfg.temperature) for s, t in zip(s_logits, t_logits)]
    )  # [E]
    return ce, kd


def _logits(model, delta, clean, scored, labels, ways) -> list[Tensor]:
    """ProtoNet logits [Q, way] per episode of `scored` [E, Q, ...] at biases base + delta [E, P],
    prototypes from `clean` [E, N, ...]: one folded forward (see simulate._folded_loss)."""
    E, N = labels.shape
    x = torch.cat([clean, scored], 1).flatten(0, 1)  # [E*(N+Q), C, H, W], episode-major
    with episode_biases(model.backbone, model.layout, delta, E):
        feats = model.features(x).view(E, x.shape[0] // E, -1)  # [E, N+Q, F]
    protos = [prototypes(feats[e, :N], labels[e], ways[e]) for e in range(E)]  # [way, F] each
    return [model.logit_scale * cosine_logits(protos[e], feats[e, N:]) for e in range(E)]


@contextlib.contextmanager
def _frozen(model):
    """No gradient edges into the target's own weights while the graph is built: backward then
    costs only what SMAT's parameters need, and never accumulates into the target's .grad."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
