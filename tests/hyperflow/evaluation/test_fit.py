"""The fit measurement (hyperflow/evaluation/fit.py): the training objective on records, the
same (record, t) draws for every drift so their losses compare pairwise."""

import copy

import numpy as np
import pytest
import torch

from engine.record import TrajectoryRecord
from hyperflow.bias import get_theta
from hyperflow.drift import DriftConfig, DriftNet
from hyperflow.errors import UserError
from hyperflow.evaluation.fit import fit_records

T = 4  # trajectory steps = the drift's horizon


def _records(model, n: int, speed: float):
    """n records whose biases move from the target's at `speed` per step along a random
    direction (speed 0: they stay put), each with its own random 4-way 3-shot support set."""
    rng = np.random.default_rng(2)
    theta0 = get_theta(model.backbone, model.layout).detach().numpy()
    for i in range(n):
        direction = rng.normal(size=theta0.shape).astype(np.float32)
        steps = np.arange(T + 1, dtype=np.float32)[:, None]
        yield TrajectoryRecord(
            id=f"rf-e{i:06d}-i00",
            episode={},
            support=rng.integers(0, 256, (12, 1, 32, 32), dtype=np.uint8),
            labels=np.repeat(np.arange(4, dtype=np.int64), 3),
            theta=theta0 + speed * steps * direction,
            loss=np.zeros(T + 1, np.float32),
            meta={},
        )


def test_a_drift_fits_what_it_predicts_and_pairs_its_draws(tiny_model):
    torch.manual_seed(0)
    cfg = DriftConfig(interpolant="linear")
    net = DriftNet(tiny_model.layout, cfg, tiny_model.backbone, tiny_model.feature_dim, T).eval()
    other = copy.deepcopy(net)
    with torch.no_grad():
        for p in other.local.parameters():
            p.add_(0.3)
    nets = {"net": net, "same": copy.deepcopy(net), "other": other}
    still = fit_records(tiny_model, nets, _records(tiny_model, 6, 0.0), draws=3)
    moving = fit_records(tiny_model, nets, _records(tiny_model, 6, 2.0), draws=3)
    # an untrained drift barely moves: it fits trajectories that stay put, not ones that move
    assert moving["loss"]["net"] > 10 * still["loss"]["net"]
    # one draw of t per (record, draw) for every drift: an identical copy differs by exactly 0
    assert still["minus_first"]["same"] == {"mean": 0.0, "ci95": 0.0}
    assert still["minus_first"]["other"]["mean"] != 0.0
    assert (still["records"], still["draws"]) == (6, 3)


def test_too_few_records_is_a_user_error(tiny_model):
    net = DriftNet(tiny_model.layout, DriftConfig(), tiny_model.backbone, tiny_model.feature_dim, T)
    with pytest.raises(UserError, match="1 records"):
        fit_records(tiny_model, {"n": net}, _records(tiny_model, 1, 0.0))
