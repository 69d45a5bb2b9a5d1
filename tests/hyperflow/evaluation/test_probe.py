"""The conditioning probe (hyperflow/evaluation/probe.py): a linear read-out that finds what a
representation encodes and finds nothing where nothing is encoded."""

import dataclasses

import numpy as np
import pytest

from engine.record import TrajectoryRecord
from hyperflow.data.dataset import Dataset, Domain
from hyperflow.data.episodes import build_episode, sample_episode
from hyperflow.drift import DriftConfig, DriftNet
from hyperflow.errors import UserError
from hyperflow.evaluation.probe import auc, probe, probe_records


def test_auc_orders_and_ties():
    labels = np.array([False, False, True, True])
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert auc(np.zeros(4), labels) == 0.5
    assert np.isnan(auc(np.ones(3), np.ones(3, dtype=bool)))


@pytest.mark.parametrize("dim", [12, 600])  # fewer and many more dimensions than rows
def test_probe_reads_what_is_encoded_and_nothing_else(dim):
    rng = np.random.default_rng(0)
    y = rng.random((300, 6)) < 0.4
    mixing = rng.normal(size=(6, dim))
    encoded = y @ mixing + 0.5 * rng.normal(size=(300, dim))
    assert probe(encoded, y).min() > 0.9
    unrelated = rng.normal(size=(300, dim))
    assert abs(probe(unrelated, y).mean() - 0.5) < 0.1


def _records(n: int):
    """n procedural episodes of a synthetic 32x32 domain, as the records collection writes."""
    rng = np.random.default_rng(1)
    images = np.zeros((8 * 10, 1, 32, 32), dtype=np.uint8)
    for i in range(len(images)):  # a bright bar per image, class-dependent placement
        c = i // 10
        images[i, 0, 6 + 2 * c : 12 + 2 * c, 4 : 4 + rng.integers(10, 24)] = 255
    labels = np.repeat(np.arange(8, dtype=np.int64), 10)
    domain = Domain("bars", "base", "clean", images, labels, [f"c{c}" for c in range(8)])
    data = Dataset("bars", {"bars": domain})
    for seed in range(n):
        spec = sample_episode(domain, seed, way=4, shot=3, query=1, shift="procedural")
        ep = build_episode(data, spec)
        yield TrajectoryRecord(
            id=f"rp-e{seed:06d}-i00",
            episode=spec.to_dict(),
            support=ep.support_x.numpy(),
            labels=ep.support_y.numpy(),
            theta=np.zeros((2, 1), np.float32),
            loss=np.zeros(2, np.float32),
            meta={},
        )


def test_the_targets_statistics_tell_which_primitives_made_an_episode(tiny_model):
    net = DriftNet(
        tiny_model.layout, DriftConfig("small"), tiny_model.backbone, tiny_model.feature_dim, 5
    ).eval()
    out = probe_records(tiny_model, net, _records(160), episodes=150)
    assert out["episodes"] == 150
    reps = out["representations"]
    assert set(reps) == {
        "drift task embedding",
        "drift site statistics",
        "target features (mean, std)",
    }
    # the primitives change image statistics the frozen target sees (noise, blur, contrast ...)
    assert reps["target features (mean, std)"]["mean_auc"] > 0.65
    assert reps["drift site statistics"]["mean_auc"] > 0.65
    # negative control: each support set paired with the next episode's composition
    recs = list(_records(151))
    swapped = [
        dataclasses.replace(r, episode={**nxt.episode, "seed": r.episode["seed"]})
        for r, nxt in zip(recs, recs[1:])
    ]
    off = probe_records(tiny_model, net, swapped)["representations"]
    assert off["target features (mean, std)"]["mean_auc"] < 0.6


def test_too_few_procedural_episodes_are_refused(tiny_model):
    net = DriftNet(
        tiny_model.layout, DriftConfig("small"), tiny_model.backbone, tiny_model.feature_dim, 5
    ).eval()
    with pytest.raises(UserError, match="5 procedural episodes"):
        probe_records(tiny_model, net, _records(5))
