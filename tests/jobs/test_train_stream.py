"""The trainer's data path: EpochStream chains epochs for one long-lived DataLoader and, with any
number of workers, delivers exactly the batches of the epoch plans in order, from a mid-epoch
start (a resumed run) across epoch boundaries."""

from __future__ import annotations

import itertools

import pytest
from torch.utils.data import DataLoader

from engine.stores import open_store, shard_name, write_shard
from engine.stream import EpochStream, RecordStream, epoch_plan
from engine.synthetic import synthetic_records

SIZES = [5, 7, 3, 6]  # 21 records; 2 ranks x batch 3: 4 batches per epoch per rank


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("epochs") / "store"
    recs = synthetic_records(sum(SIZES), T=3, P=16, n_support=(3, 6), image=(1, 8, 8), run="s")
    m = open_store(root, {"T": 3}, ["wds"])
    start, ids = 0, {}
    for k, n in enumerate(SIZES):
        info = write_shard(root, "wds", shard_name(k), recs[start : start + n])
        m.commit(info)
        ids[info.name] = info.ids
        start += n
    return root, ids


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_epoch_stream_follows_the_plans_across_epochs(store, workers):
    root, ids = store
    rank, world, batch, shuffle = 1, 2, 3, 4
    stream = RecordStream(root, "wds", rank, world, batch, seed=5, shuffle_buffer=shuffle)
    stream.collated = False
    assert len(stream) == 4
    expected = [
        (epoch, j, [ids[name][i] for name, i in plan_batch])
        for epoch in (2, 3, 4)
        for j, plan_batch in enumerate(
            epoch_plan(stream.shards, world, batch, 5, epoch, shuffle)[rank]
        )
    ][3:]  # resume at batch 3 of epoch 2
    extra = {"num_workers": workers, "prefetch_factor": 3} if workers else {}
    loader = DataLoader(EpochStream(stream, epoch=2, start=3), batch_size=None, **extra)
    got = [
        (e, j, [r.id for r in records]) for e, j, records in itertools.islice(loader, len(expected))
    ]
    assert got == expected


def test_epoch_stream_refuses_a_start_past_the_epoch(store):
    root, _ = store
    stream = RecordStream(root, "wds", 0, 2, 3, seed=0)
    with pytest.raises(ValueError, match="start batch 5 not in"):
        EpochStream(stream, epoch=0, start=5)
