import math
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from engine.manifest import ShardInfo
from engine.stores import read_shard
from engine.stream import RecordStream, epoch_plan, keep, split_support
from hyperflow.errors import UserError

SIZES = [7, 5, 9, 3, 6]  # 30 records; 30 % 4 != 0 and uneven shards


def _shards(sizes=SIZES):
    return [ShardInfo(f"shard-{k:06d}", "wds", "", n, 0, "", [], {}) for k, n in enumerate(sizes)]


def _flat(plan_of_rank):
    return [x for batch in plan_of_rank for x in batch]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [2, 4, 7])
def test_plan_covers_every_record_once_with_equal_steps(world, batch):
    plan = epoch_plan(_shards(), world, batch, seed=3, epoch=0)
    assert len(plan) == world
    steps = {len(p) for p in plan}
    assert steps == {math.ceil(math.ceil(30 / world) / batch)}  # the same on every rank
    ranks = [_flat(p) for p in plan]
    everything = [x for r in ranks for x in r]
    assert len(everything) == len(set(everything)) == 30  # disjoint, no padding
    assert set(everything) == {(s.name, i) for s in _shards() for i in range(s.records)}
    for p in plan:
        sizes = [len(b) for b in p]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1 and max(sizes) <= batch
    assert max(len(r) for r in ranks) - min(len(r) for r in ranks) <= 1


def test_plan_is_seeded_by_seed_and_epoch():
    a = epoch_plan(_shards(), 2, 4, seed=0, epoch=0)
    assert a == epoch_plan(_shards(), 2, 4, seed=0, epoch=0)
    assert a != epoch_plan(_shards(), 2, 4, seed=0, epoch=1)
    assert a != epoch_plan(_shards(), 2, 4, seed=1, epoch=0)


def test_each_rank_keeps_its_share_across_epochs_in_a_new_order():
    # fixed shares keep per-record caches of a rank warm; the order still changes every epoch
    plans = [epoch_plan(_shards(), 3, 4, seed=2, epoch=e) for e in range(3)]
    for rank in range(3):
        shares = [_flat(p[rank]) for p in plans]
        assert all(sorted(x) == sorted(shares[0]) for x in shares)
        assert len({tuple(x) for x in shares}) == 3
    assert plans[0][0] != epoch_plan(_shards(), 3, 4, seed=3, epoch=0)[0]


def test_shuffle_buffer_keeps_reads_local():
    # Without a buffer a rank reads whole shards in order; with one, items move at most
    # `buffer` positions earlier than their read position.
    plan = epoch_plan(_shards(), 1, 4, seed=0, epoch=0, shuffle_buffer=1)
    seq = _flat(plan[0])
    assert all(a[0] != b[0] or b[1] == a[1] + 1 for a, b in zip(seq, seq[1:]))
    shuffled = _flat(epoch_plan(_shards(), 1, 4, seed=0, epoch=0, shuffle_buffer=4)[0])
    assert shuffled != seq and sorted(shuffled) == sorted(seq)
    pos = {x: k for k, x in enumerate(seq)}
    assert all(pos[x] - k <= 3 for k, x in enumerate(shuffled))


def test_plan_refuses_empty_batches():
    with pytest.raises(UserError, match="empty batch"):
        epoch_plan(_shards([5]), 2, 1, seed=0, epoch=0)  # ranks get 3 and 2 records, 3 steps
    with pytest.raises(UserError, match="batch_size"):
        epoch_plan(_shards(), 2, 0, seed=0, epoch=0)


def _run(root, fmt, world, workers, epoch=0, seed=0):
    # ids per batch, per rank, as the trainer would see them through a DataLoader.
    out = []
    for rank in range(world):
        stream = RecordStream(root, fmt, rank, world, batch_size=3, seed=seed, shuffle_buffer=4)
        stream.set_epoch(epoch)
        dl = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=keep)
        batches = list(dl)
        # the small arrays cross pickled, the two large ones as (shared-memory) tensors
        assert all(isinstance(b["loss"], np.ndarray) for b in batches)
        assert all(isinstance(b["theta"], torch.Tensor) for b in batches)
        out.append([b["ids"] for b in batches])
        assert len(out[-1]) == len(stream)
    return out


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_stream_through_dataloader(tmp_path, make_store, fmt, world, workers):
    _, recs = make_store(tmp_path, [5, 4, 6, 3], formats=[fmt])
    got = _run(tmp_path, fmt, world, workers)
    assert len({len(r) for r in got}) == 1  # equal batch counts: no DDP hang
    ids = [i for rank in got for batch in rank for i in batch]
    assert sorted(ids) == sorted(r.id for r in recs) and len(ids) == len(set(ids))
    # Worker interleaving hands batches over in plan order.
    stream = RecordStream(tmp_path, fmt, 0, world, batch_size=3, seed=0, shuffle_buffer=4)
    names = {s.name: [r.id for r in read_shard(tmp_path, fmt, s.name)] for s in stream.shards}
    assert got[0] == [[names[n][i] for n, i in batch] for batch in stream.plan()]


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_reshuffle_and_repeat(tmp_path, make_store, workers):
    make_store(tmp_path, [5, 4, 6, 3], formats=["wds"])
    e0 = _run(tmp_path, "wds", 2, workers, epoch=0)
    assert e0 == _run(tmp_path, "wds", 2, workers, epoch=0)
    e1 = _run(tmp_path, "wds", 2, workers, epoch=1)
    assert e0 != e1
    assert sorted(sum(sum(e0, []), [])) == sorted(sum(sum(e1, []), []))


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_collated_batch_and_pickling(tmp_path, make_store, fmt):
    _, recs = make_store(tmp_path, [4, 3], formats=[fmt])
    stream = RecordStream(tmp_path, fmt, 0, 1, batch_size=4, seed=0)
    it = iter(stream)
    b = next(it)  # a stream mid-iteration must still pickle (workers get copies)
    clone = pickle.loads(pickle.dumps(stream))
    assert [x["ids"] for x in clone] == [x["ids"] for x in stream]
    byid = {r.id: r for r in recs}
    T1, P = recs[0].theta.shape
    assert b["theta"].dtype == torch.float32 and b["theta"].shape == (len(b["ids"]), T1, P)
    assert b["loss"].dtype == np.float32 and b["loss"].shape == (len(b["ids"]), T1)
    supports, labels = split_support(b)
    assert b["sizes"].tolist() == [len(byid[i].labels) for i in b["ids"]]
    for k, i in enumerate(b["ids"]):
        r = byid[i]
        assert torch.equal(b["theta"][k], torch.from_numpy(r.theta).half().float())
        assert supports[k].dtype == torch.uint8 and torch.equal(
            supports[k], torch.from_numpy(r.support)
        )
        assert torch.equal(labels[k], torch.from_numpy(r.labels))
    raw = next(iter(RecordStream(tmp_path, fmt, 0, 1, batch_size=4, seed=0, collated=False)))
    assert [r.id for r in raw] == b["ids"]


def test_stream_refuses_bad_arguments(tmp_path, make_store):
    make_store(tmp_path, [3], formats=["wds"])
    with pytest.raises(UserError, match="'zarr'"):
        RecordStream(tmp_path, "zarr", 0, 1, batch_size=2, seed=0)
    with pytest.raises(UserError, match="rank 2"):
        RecordStream(tmp_path, "wds", 2, 2, batch_size=2, seed=0)


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_max_records_streams_the_stores_first_records_and_nests(tmp_path, make_store, fmt):
    # the scaling curve's data sizes: prefixes of the store in manifest order, one inside the next
    _, recs = make_store(tmp_path, [5, 4, 6, 3], formats=[fmt])
    seen = {}
    for n in (4, 7, 18):  # inside the first shard, across a cut second shard, every record
        ids = []
        for rank in range(2):
            stream = RecordStream(tmp_path, fmt, rank, 2, 2, seed=1, max_records=n)
            dl = DataLoader(stream, batch_size=None, num_workers=0, collate_fn=keep)
            ids += [i for b in dl for i in b["ids"]]
        assert sorted(ids) == sorted(r.id for r in recs[:n]) and len(ids) == n, n
        seen[n] = set(ids)
    assert seen[4] < seen[7] < seen[18]
    with pytest.raises(UserError, match="max_records=19 but the store holds 18"):
        RecordStream(tmp_path, fmt, 0, 1, 2, seed=1, max_records=19)
