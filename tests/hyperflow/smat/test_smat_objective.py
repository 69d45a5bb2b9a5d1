"""SMAT objective: KD, training on episodes with simulated bias-tuned teachers, records."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.record import TrajectoryRecord
from hyperflow.adapt.methods import classify
from hyperflow.adapt.simulate import initial_theta, simulate
from hyperflow.bias import get_theta
from hyperflow.smat.model import Smat, SmatConfig
from hyperflow.smat.objective import SmatEpisode, SmatObjective, kd_loss, smat_loss


@pytest.fixture
def sharp_model(tiny_model):
    # the untrained backbone's features are nearly parallel (cosine ~0.999 between any two
    # images), so at the default scale 10 every loss is log(way) to 3 decimals; a larger scale
    # lets bias changes move the loss
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.logit_scale.fill_(100.0)
    for p in model.parameters():  # the session model may carry other tests' flags
        p.requires_grad_(True)
    return model.eval()


def _with_teachers(model, episodes, steps=5, lr=0.1) -> list[SmatEpisode]:
    n = len(episodes)
    theta0 = initial_theta(model, n, 0.0, torch.Generator())
    traj = simulate(model, episodes, theta0, torch.full((n,), lr), steps, seeds=list(range(n)))
    return [
        SmatEpisode(ep.support_x, ep.support_y, traj.theta[i, -1]) for i, ep in enumerate(episodes)
    ]


def _smat(model, **kw) -> Smat:
    torch.manual_seed(0)
    cfg = SmatConfig(**{"experts": 4, "tau": 0.3, "width": 16, **kw})
    return Smat(cfg, model.layout.size, model.feature_dim)


def test_kd_is_zero_for_equal_logits_and_positive_otherwise():
    s = torch.randn(6, 5)
    assert kd_loss(s, s.clone(), 2.0).abs() < 1e-6
    assert kd_loss(s, s + 3 * torch.randn(6, 5), 2.0) > 1e-3


def test_kd_term_vanishes_when_the_student_is_the_teacher(sharp_model, episodes):
    base = get_theta(sharp_model.backbone, sharp_model.layout)
    tasks = [SmatEpisode(ep.support_x, ep.support_y, base) for ep in episodes[:2]]
    smat = _smat(sharp_model)  # theta_delta = 0: the merge is theta_pre, the teacher's biases
    loss = smat_loss(sharp_model, smat, tasks, torch.Generator().manual_seed(0))
    assert loss.kd.abs() < 1e-6 and loss.ce > 0


def test_training_on_teacher_episodes_lowers_the_objective(sharp_model, episodes):
    tasks = _with_teachers(sharp_model, episodes[:3])
    smat = _smat(sharp_model).train()
    opt = torch.optim.Adam(smat.param_groups(lr=0.05, gate_lr=0.05))

    def measured():  # same gates and augmentations every time; no multiplier step under no_grad
        with torch.no_grad():
            return smat_loss(sharp_model, smat, tasks, torch.Generator().manual_seed(123))

    before = measured()
    assert before.kd > 0, "teachers equal the pretrained biases: nothing to distil"
    for step in range(12):
        loss = smat_loss(sharp_model, smat, tasks, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    after = measured()
    assert after.total < before.total - 1e-3, (before.total.item(), after.total.item())
    assert after.kd < before.kd
    assert all(p.grad is None for p in sharp_model.parameters()), "gradient reached the target"
    assert all(p.requires_grad for p in sharp_model.parameters()), "target flags not restored"


def test_query_sets_and_mixed_sizes(sharp_model, make_episode):
    # episodes that carry a query set are scored on it (prototypes from the clean support),
    # whatever their way and size: with theta_delta = 0 the student runs at the pretrained
    # biases, so its CE is each episode's query cross-entropy of the target itself, averaged
    eps = [make_episode(0, way=5, shot=2), make_episode(1, way=3, shot=2), make_episode(2, 5, 2)]
    base = get_theta(sharp_model.backbone, sharp_model.layout)
    tasks = [SmatEpisode(e.support_x, e.support_y, base, e.query_x, e.query_y) for e in eps]
    smat = _smat(sharp_model)
    loss = smat_loss(sharp_model, smat, tasks, torch.Generator().manual_seed(0))
    want = [F.cross_entropy(classify(sharp_model, e), e.query_y) for e in eps]
    assert torch.allclose(loss.ce, torch.stack(want).mean(), rtol=1e-4), (loss.ce, want)
    assert loss.kd.abs() < 1e-6  # the teacher is the pretrained biases too
    assert loss.density.shape == (4,)
    loss.total.backward()
    assert smat.theta_delta.grad is not None and smat.theta_delta.grad.abs().sum() > 0


def test_episode_from_record_takes_the_endpoint_as_teacher():
    theta = np.arange(12, dtype=np.float16).reshape(3, 4)  # [T+1, P]
    rec = TrajectoryRecord(
        id="ra-e000000-i00",
        episode={},
        support=np.zeros((4, 1, 8, 8), np.uint8),
        labels=np.array([0, 0, 1, 1], np.int64),
        theta=theta,
        loss=np.zeros(3, np.float32),
        meta={},
    )
    ep = SmatEpisode.from_record(rec)
    assert ep.teacher.dtype == torch.float32 and ep.teacher.tolist() == [8.0, 9.0, 10.0, 11.0]
    assert ep.way == 2 and ep.support_x.shape == (4, 1, 8, 8) and ep.query_x is None


def test_objective_module_owns_only_smat(sharp_model, episodes):
    smat = _smat(sharp_model)
    objective = SmatObjective(sharp_model, smat)
    assert all(k.startswith("smat.") for k in objective.state_dict()), "target must not be owned"
    base = get_theta(sharp_model.backbone, sharp_model.layout)
    tasks = [SmatEpisode(ep.support_x, ep.support_y, base) for ep in episodes[:2]]
    a = objective(tasks, torch.Generator().manual_seed(0))
    b = smat_loss(sharp_model, smat, tasks, torch.Generator().manual_seed(0))
    # (total differs: the first call's multiplier step changes the second call's penalty)
    assert torch.allclose(a.ce, b.ce) and torch.allclose(a.kd, b.kd)
