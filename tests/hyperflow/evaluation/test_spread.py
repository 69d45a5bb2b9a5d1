"""The init spread (hyperflow/evaluation/spread.py): how much of the velocity target two runs of
one episode disagree on, which no function of (task, t) can predict."""

import numpy as np
import pytest
import torch

from engine.record import TrajectoryRecord
from hyperflow.bias import get_theta
from hyperflow.drift import DriftConfig, DriftNet
from hyperflow.errors import UserError
from hyperflow.evaluation.spread import init_pairs, init_spread

T = 4  # trajectory steps = the drift's horizon


def _record(model, episode: int, init: int, direction: np.ndarray, sigma: float = 0.0):
    theta0 = get_theta(model.backbone, model.layout).detach().numpy()
    steps = np.arange(T + 1, dtype=np.float32)[:, None]
    rng = np.random.default_rng(episode)  # the episode's support: the same for both inits
    return TrajectoryRecord(
        id=f"rs-e{episode:06d}-i{init:02d}",
        episode={},
        support=rng.integers(0, 256, (12, 1, 32, 32), dtype=np.uint8),
        labels=np.repeat(np.arange(4, dtype=np.int64), 3),
        theta=theta0 + steps * direction.astype(np.float32),
        loss=np.zeros(T + 1, np.float32),
        meta={"episode_index": episode, "init": init, "sigma": sigma},
    )


def _pairs(model, n: int, apart: float):
    """n episodes of two inits each: a shared direction, plus +-apart of a second one."""
    rng = np.random.default_rng(0)
    out = []
    for e in range(n):
        shared, split = (rng.normal(size=model.layout.size) for _ in range(2))
        out += [_record(model, e, k, shared + (1 - 2 * k) * apart * split) for k in (0, 1)]
    return out


@pytest.fixture
def net(tiny_model):
    torch.manual_seed(0)
    cfg = DriftConfig(interpolant="piecewise_cubic")
    return DriftNet(tiny_model.layout, cfg, tiny_model.backbone, tiny_model.feature_dim, T).eval()


def test_inits_that_agree_have_no_spread_and_it_grows_with_their_gap(tiny_model, net):
    same = init_spread(tiny_model, net, init_pairs(_pairs(tiny_model, 4, 0.0)), draws=3)
    assert same["spread"]["mean"] == 0.0 and same["theta_gap"] == 0.0
    near = init_spread(tiny_model, net, init_pairs(_pairs(tiny_model, 4, 0.5)), draws=3)
    far = init_spread(tiny_model, net, init_pairs(_pairs(tiny_model, 4, 1.0)), draws=3)
    # a variance: twice the gap, four times the spread (the same draws of t)
    assert far["spread"]["mean"] == pytest.approx(4 * near["spread"]["mean"], rel=1e-3)
    assert 0 < near["theta_gap"] < far["theta_gap"]
    # an untrained drift predicts neither path: its loss exceeds what (task, t) cannot explain
    assert far["drift_loss"]["mean"] > far["spread"]["mean"]
    assert far["share"] == pytest.approx(far["spread"]["mean"] / far["drift_loss"]["mean"])


class _Predicts(DriftNet):
    """A drift whose velocity is a fixed vector, whatever theta, t and the task."""

    def forward(self, theta, t, task):
        return self.answer.expand(theta.shape[0], -1)


def test_predicting_the_inits_mean_velocity_leaves_exactly_the_spread(tiny_model):
    # two episodes of the same two paths: theta0 + t (shared +- split); their mean velocity is
    # `shared`, the best any (task, t) predictor can do, and its loss is the spread itself
    rng = np.random.default_rng(1)
    shared, split = (rng.normal(size=tiny_model.layout.size) for _ in range(2))
    records = [
        _record(tiny_model, e, k, shared + (1 - 2 * k) * split) for e in (0, 1) for k in (0, 1)
    ]
    cfg = DriftConfig(interpolant="piecewise_cubic")
    net = _Predicts(tiny_model.layout, cfg, tiny_model.backbone, tiny_model.feature_dim, T).eval()
    net.answer = torch.tensor(shared, dtype=torch.float32).unsqueeze(0)
    best = init_spread(tiny_model, net, init_pairs(records), draws=2)
    # float32 interpolation on either side: equal to rounding (one init's velocity for the mean,
    # the fault this guards against, doubles the spread)
    assert best["drift_loss"]["mean"] == pytest.approx(best["spread"]["mean"], rel=1e-3)
    net.answer = torch.tensor(shared + 0.5 * split, dtype=torch.float32).unsqueeze(0)
    worse = init_spread(tiny_model, net, init_pairs(records), draws=2)
    assert worse["drift_loss"]["mean"] > 1.2 * worse["spread"]["mean"]


def test_pairs_are_one_episodes_sigma_zero_inits(tiny_model):
    d = np.ones(tiny_model.layout.size)
    records = [
        _record(tiny_model, 3, 1, d),
        _record(tiny_model, 1, 0, d),
        _record(tiny_model, 3, 0, d),
        _record(tiny_model, 1, 1, d, sigma=0.1),  # started elsewhere: not a pair
        _record(tiny_model, 5, 0, d),  # no second init
    ]
    pairs = init_pairs(records)
    assert [(a.meta["episode_index"], a.meta["init"], b.meta["init"]) for a, b in pairs] == [
        (3, 0, 1)
    ]


def test_fewer_than_two_pairs_is_a_user_error(tiny_model, net):
    with pytest.raises(UserError, match="1 init pairs"):
        init_spread(tiny_model, net, init_pairs(_pairs(tiny_model, 1, 1.0)))
