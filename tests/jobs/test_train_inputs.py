"""The trainer's bounded cache of frozen-encoder inputs: LRU order, capacity, and that cached
inputs equal freshly computed ones."""

import numpy as np
import torch

from hyperflow.drift import DriftConfig, DriftNet
from jobs.train_inputs import SupportCache, support_inputs


def _value(k: float):
    return torch.full((1, 2), k), None


def test_lru_keeps_the_most_recently_used_records():
    cache = SupportCache(2)
    cache.put("a", _value(1))
    cache.put("b", _value(2))
    cache.get("a")  # a is now more recent than b
    cache.put("c", _value(3))
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    off = SupportCache(0)
    off.put("a", _value(1))
    assert len(off) == 0


def _moments(stats: torch.Tensor) -> torch.Tensor:
    """Site statistics [B, 3, P] (mean, log_std, log_sep) -> [B, 3, P] float64 mean, variance and
    class separation (the statistics carry eps = 1e-6 inside their logs)."""
    s = stats.double()
    return torch.stack([s[:, 0], (2 * s[:, 1]).exp() - 1e-6, (2 * s[:, 2]).exp() - 1e-6], dim=1)


def _stat_errors(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """[B, P]: the largest error of got's moments against want's, in units of want's mean square
    E[x^2] (its square root for the mean). An encoder pass over a batch of another make-up rounds
    differently on every CPU (kernels differ per batch size, BLAS build and thread count), and
    var = E[x^2] - mu^2 cancels: errors scale with E[x^2], not with the possibly much smaller
    variance, so a tolerance relative to log_std itself held only on the CPU it was tuned on
    (the same units as tests/hyperflow/drift/test_site_stats.py)."""
    g, w = _moments(got), _moments(want)
    square = w[:, 1] + w[:, 0] ** 2 + 1e-6  # E[x^2] (+ eps)
    err = (g - w).abs()
    return torch.stack([err[:, 0] / square.sqrt(), err[:, 1] / square, err[:, 2] / square]).amax(0)


# float32 eps is 1.2e-7. Measured here: the re-encoded record's features within 5e-7 of the fresh
# ones (in units of their largest entry) and its moments within 2e-6, so 3e-4 leaves >100x for
# other kernels; another record's inputs miss it on every image and on ~2/3 of the coordinates
_TOL = 3e-4


def test_cached_inputs_equal_fresh_ones_and_stay_bounded(tiny_model, episodes):
    net = DriftNet(tiny_model.layout, DriftConfig(), tiny_model.backbone, tiny_model.feature_dim, 5)
    batch = {
        "ids": [f"r{i}" for i in range(len(episodes))],
        "support": torch.cat([ep.support_x for ep in episodes]),
        "labels": torch.cat([ep.support_y for ep in episodes]).numpy(),
        "sizes": np.array([len(ep.support_y) for ep in episodes]),
    }  # as engine.stream.collate lays a batch out
    fresh = support_inputs(net, tiny_model, batch, SupportCache(0))
    cache = SupportCache(3)  # smaller than the batch: some records are evicted on the way
    first = support_inputs(net, tiny_model, batch, cache)
    assert cache.misses == len(episodes)  # every record encoded once
    again = support_inputs(net, tiny_model, batch, cache)
    assert len(cache) == 3 and len(episodes) < cache.misses < 2 * len(episodes)
    big = SupportCache(len(episodes))
    support_inputs(net, tiny_model, batch, big)
    support_inputs(net, tiny_model, batch, big)
    assert big.misses == len(episodes)  # the second pass is all hits
    assert fresh[1].shape == (len(episodes), 3, tiny_model.layout.size)
    # `first` encoded the whole batch in one pass, as `fresh` did: the same kernels on the same
    # inputs, so the same values
    torch.testing.assert_close(first[0], fresh[0])
    torch.testing.assert_close(first[1], fresh[1])
    # `again` re-encoded the evicted record alone: a smaller batch, which rounds differently
    features, stats = fresh
    scale = features.abs().max()
    assert (again[0] - features).abs().max() < _TOL * scale
    assert _stat_errors(again[1], stats).max() < _TOL
    # the tolerance still tells records apart: each record's neighbour's inputs fail it
    n = len(episodes)
    assert {len(ep.support_y) for ep in episodes} == {len(features) // n}, "equal support sizes"
    neighbour = features.view(n, -1, features.shape[1]).roll(1, 0).flatten(0, 1)
    assert ((neighbour - features).abs().amax(1) > _TOL * scale).all()
    assert (_stat_errors(stats.roll(1, 0), stats) > _TOL).float().mean(1).min() > 0.5
