"""What the trainer feeds the drift network's task encoder, and the bounded cache behind it.

With the frozen target as encoder, a record's encoder features and site statistics never change,
so they are computed once and kept by record id. The cache is an LRU with a record budget
(train.cache_records): a quickstart store fits whole (~22 KB per record), a store of millions
does not, and then the least recently used records are recomputed when they come round again.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from engine.stream import split_support
from hyperflow.drift import DriftNet
from hyperflow.model import TargetModel


class SupportCache:
    """LRU map record id -> (features [N, F], site stats [K, P] or None), at most `capacity`."""

    def __init__(self, capacity: int):
        assert capacity >= 0, f"cache capacity must be >= 0, got {capacity}"
        self.capacity = capacity
        self.misses = 0  # records support_inputs had to encode (the trainer logs it per step)
        self._items: OrderedDict[str, tuple[Tensor, Tensor | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> tuple[Tensor, Tensor | None]:
        self._items.move_to_end(key)  # most recently used last
        return self._items[key]

    def put(self, key: str, value: tuple[Tensor, Tensor | None]) -> None:
        if self.capacity == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def support_inputs(
    net: DriftNet, model: TargetModel, batch: dict, cache: SupportCache
) -> tuple[Tensor, Tensor | None]:
    """Frozen encoder: (features [sum N, F], site stats [B, K, P] or None), from the cache or one
    encoder pass over the records it lacks. A trained encoder runs inside the objective:
    (normalised images [sum N, C, H, W], None)."""
    device = net.velocity_scale.device
    if not net.frozen_encoder:
        return model.preprocess(batch["support"]).to(device), None
    found = {i: cache.get(i) for i in batch["ids"] if i in cache}
    rows = zip(batch["ids"], *split_support(batch))
    missing = [(i, x, y) for i, x, y in rows if i not in found]
    cache.misses += len(missing)
    if missing:
        images = model.preprocess(torch.cat([x for _, x, _ in missing])).to(device)
        feats, stats = net.support_inputs(images, [y.to(device) for _, _, y in missing])
        per_record = feats.split([len(x) for _, x, _ in missing])
        for j, ((i, _, _), f) in enumerate(zip(missing, per_record)):
            found[i] = (f, None if stats is None else stats[j])
            cache.put(i, found[i])
    features = torch.cat([found[i][0] for i in batch["ids"]])
    if not net.n_stats:
        return features, None
    return features, torch.stack([found[i][1] for i in batch["ids"]])
