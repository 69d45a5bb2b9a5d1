"""What the trainer feeds the drift network's task encoder, and the bounded cache behind it.

With the frozen target as encoder, a record's encoder features and site statistics never change,
so they are computed once and kept by record id. The cache is an LRU with a budget in bytes
(train.cache_bytes, per rank; train.cache_records, if set, also bounds the record count): a
quickstart store fits whole (~22 KB per record at P=1040), a store of millions does not, nor
does a large target's (site statistics grow with P: ~1.4 MB per record at P=115k), and then the
least recently used records are recomputed when they come round again.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from engine.stores import read_records
from engine.stream import collate, split_support
from hyperflow.drift import DriftNet, fit_normalizer_from_knots
from hyperflow.model import TargetModel

NORMALIZER_RECORDS = 256  # records (in manifest order, the same on every rank) for normalisers


class SupportCache:
    """LRU map record id -> (features [N, F], site stats [K, P] or None), whose tensors take at
    most `max_bytes` (and, if given, at most `max_records` entries)."""

    def __init__(self, max_bytes: int, max_records: int | None = None):
        assert max_bytes >= 0, f"cache budget must be >= 0 bytes, got {max_bytes}"
        assert max_records is None or max_records >= 0, f"bad record budget {max_records}"
        self.max_bytes, self.max_records = max_bytes, max_records
        self.nbytes = 0  # bytes of the cached tensors
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
        size = _nbytes(value)
        if size > self.max_bytes or self.max_records == 0:
            return  # (a record larger than the whole budget is not kept)
        if key in self._items:
            self.nbytes -= _nbytes(self._items.pop(key))
        self._items[key] = value  # most recently used last
        self.nbytes += size
        limit = len(self._items) if self.max_records is None else self.max_records
        while self.nbytes > self.max_bytes or len(self._items) > limit:
            self.nbytes -= _nbytes(self._items.popitem(last=False)[1])


def _nbytes(value: tuple[Tensor, Tensor | None]) -> int:
    # the elements' bytes; true of what is held because support_inputs caches compact copies,
    # not views that would keep a whole batch's tensors alive
    return sum(t.numel() * t.element_size() for t in value if t is not None)


def support_inputs(
    net: DriftNet, model: TargetModel, batch: dict, cache: SupportCache
) -> tuple[Tensor, Tensor | None]:
    """Frozen encoder: (features [sum N, F], site stats [B, K, P] or None), from the cache or an
    encoder pass per record it lacks. A trained encoder runs inside the objective:
    (normalised images [sum N, C, H, W], None)."""
    device = net.velocity_scale.device
    if not net.frozen_encoder:
        return model.preprocess(batch["support"]).to(device), None
    found = {i: cache.get(i) for i in batch["ids"] if i in cache}
    rows = zip(batch["ids"], *split_support(batch))
    missing = [(i, x, y) for i, x, y in rows if i not in found]
    cache.misses += len(missing)
    # one encoder pass per record: a record's inputs then do not depend on which records share
    # its batch (kernels differ in the last bits across batch sizes), so a resumed run, whose
    # cache starts empty, computes exactly what the uninterrupted run cached
    for i, x, y in missing:
        feats, stats = net.support_inputs(model.preprocess(x).to(device), [y.to(device)])
        found[i] = (feats, None if stats is None else stats[0])
        if cache.max_bytes:
            cache.put(i, (feats.clone(), None if stats is None else stats[0].clone()))
    features = torch.cat([found[i][0] for i in batch["ids"]])
    if not net.n_stats:
        return features, None
    return features, torch.stack([found[i][1] for i in batch["ids"]])


def fit_normalizers(net, model, store: str, tc, interpolant: str, gen) -> None:
    """Fit the drift network's input normalisers on the first NORMALIZER_RECORDS records this run
    trains on (manifest order: the same on every rank, given the same `gen`)."""
    # from the records this run trains on: the first ones in manifest order
    n = min(NORMALIZER_RECORDS, tc.max_records or NORMALIZER_RECORDS)
    records = []
    for r in read_records(store, tc.format):
        records.append(r)
        if len(records) == n:
            break
    knots = torch.stack([torch.from_numpy(r.theta).float() for r in records])  # [n, T+1, P]
    stats = None
    if net.n_stats:  # site statistics of these records' support sets, 32 episodes per pass
        chunks = [records[i : i + 32] for i in range(0, len(records), 32)]
        stats = torch.cat(
            [support_inputs(net, model, collate(c), SupportCache(0))[1] for c in chunks]
        )
    fit_normalizer_from_knots(net, knots, interpolant, gen, stats=stats)
