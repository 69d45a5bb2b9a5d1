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
    for got in (first, again):
        torch.testing.assert_close(got[0], fresh[0])
        # records encoded in batches of other make-up: E[x^2] - mu^2 rounds a little differently
        torch.testing.assert_close(got[1], fresh[1], rtol=1e-3, atol=1e-3)
    assert fresh[1].shape == (len(episodes), 3, tiny_model.layout.size)
