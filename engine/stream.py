"""Streaming committed records to DDP ranks and their DataLoader workers.

A plan per epoch fixes who reads what (`epoch_plan`), identically on every rank:
1. rank shares, fixed for the run: the shards, in rng(seed) order, are laid end to end and cut
   into world_size contiguous, near-equal parts, one per rank. Ranks are disjoint and together
   cover every record exactly once (no padding, no dropping). A rank meets the same records
   every epoch, so what it caches per record (the trainer's frozen-encoder inputs) is warm from
   its second epoch on and world ranks cache world times what one would;
2. per epoch, a rank's *read sequence* is its share's shard runs in rng(seed, epoch, rank)
   order, each run front to back (sequential within a shard: what tar likes);
3. the rank passes that sequence through a shuffle buffer seeded by rng(seed, epoch, rank); the
   k-th record out was read at position < k + shuffle_buffer;
4. each rank cuts it into exactly steps = ceil(ceil(N / W) / B) near-equal batches, so every
   rank takes the same number of optimizer steps (unequal counts hang DDP).
set_epoch(e, start) skips the first `start` batches of the plan without reading them (a trainer
resuming mid-epoch). DataLoader worker i of a rank takes batches i, i + num_workers, ... of the
rest; the DataLoader's round-robin over workers hands them to the trainer in plan order.
EpochStream chains the epochs for one long-lived DataLoader. A worker reads its records in
read-sequence order (each shard opened once, front to back) and holds each until its batch is
complete: by 3., about shuffle_buffer + batch_size * num_workers records at most.

Elastic runs (Ray Train with --min-workers) plan over `shares` virtual ranks fixed for the run
(the most workers it may have) instead of the world size: rank r of W streams shares r, r + W,
..., its step-j batch being the union of those shares' batch j. The plan, and so a position
(epoch, batch) in it, is then the same whatever W is: after a resize the new ranks go on from
the checkpoint's position, and within the epoch no record is read twice or skipped. Each batch
carries `records_in_step`, the records of batch j over all shares, so a trainer can weight its
rank's loss by its share of the step (DDP averages ranks, which may hold unequal parts).
"""

import math
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from engine.errors import UserError
from engine.manifest import Manifest, ShardInfo
from engine.record import TrajectoryRecord
from engine.stores import STORES, open_shard


def _buffer_shuffle(items: list, size: int, rng: np.random.Generator) -> list:
    # Reservoir-style: fill a buffer of `size`, then emit a random element per new item.
    u = rng.random(len(items))
    buf, out = [], []
    for k, x in enumerate(items):
        buf.append(x)
        if len(buf) >= size:
            j = int(u[k] * len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            out.append(buf.pop())
    return out + [buf[j] for j in rng.permutation(len(buf))]


def _rank_share(shards: list[ShardInfo], world_size: int, seed: int, rank: int):
    """Rank's fixed share as runs (shard index, first record, stop), in share order."""
    order = np.random.default_rng([seed]).permutation(len(shards)).tolist()
    n = sum(s.records for s in shards)
    lo = rank * (n // world_size) + min(rank, n % world_size)  # [lo, hi) of the laid-out store
    hi = lo + n // world_size + (rank < n % world_size)
    runs, start = [], 0
    for k in order:
        a, b = max(lo, start), min(hi, start + shards[k].records)
        if a < b:
            runs.append((k, a - start, b - start))
        start += shards[k].records
    return runs


def _read_sequence(shards: list[ShardInfo], world_size: int, seed: int, epoch: int, rank: int):
    """[(shard name, index)] in the order rank reads its share in epoch (module docstring 2.)."""
    runs = _rank_share(shards, world_size, seed, rank)
    seq = []
    for j in np.random.default_rng([seed, epoch, rank, 1]).permutation(len(runs)):
        k, first, stop = runs[j]
        seq += [(shards[k].name, i) for i in range(first, stop)]
    return seq


def first_records(shards: list[ShardInfo], n: int) -> list[ShardInfo]:
    """The shards that hold the store's first n records in manifest order (n = 0: all), the last
    one cut to what is needed; prefixes nest, so smaller subsets are inside larger ones."""
    if n < 0:
        raise UserError(f"max_records must be >= 0 (0: every record), got {n}")
    if n == 0:
        return list(shards)
    out, left = [], n
    for s in shards:
        if left <= 0:
            break
        # a cut shard is read by index: the plan only asks for its first `left` records
        out.append(s if s.records <= left else replace(s, records=left))
        left -= s.records
    if left > 0:
        raise UserError(f"max_records={n} but the store holds {n - left} records")
    return out


def rank_plan(
    shards: list[ShardInfo],
    world_size: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int,
    shuffle_buffer: int = 256,
) -> list[list[tuple[str, int]]]:
    """plan[step] = rank's batch as [(shard name, index in shard)]; see module docstring. Needs
    only this rank's share: a worker never computes the other ranks' plans."""
    if world_size < 1 or batch_size < 1:
        raise UserError(f"world_size {world_size} and batch_size {batch_size} must be >= 1")
    n = sum(s.records for s in shards)
    if n == 0:
        raise UserError("no records to stream: the store has no committed shards")
    steps = math.ceil(math.ceil(n / world_size) / batch_size)
    if n // world_size < steps:  # the smallest share must fill every step
        raise UserError(
            f"{n} records over world_size {world_size} with batch_size {batch_size} would "
            f"give a rank an empty batch; use batch_size >= 2 or more records"
        )
    part = _read_sequence(shards, world_size, seed, epoch, rank)
    part = _buffer_shuffle(part, shuffle_buffer, np.random.default_rng([seed, epoch, rank]))
    bounds = np.linspace(0, len(part), steps + 1).round().astype(int)
    return [part[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def epoch_plan(
    shards: list[ShardInfo],
    world_size: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle_buffer: int = 256,
) -> list[list[list[tuple[str, int]]]]:
    """plan[rank][step] for every rank (rank_plan of each)."""
    args = (world_size, batch_size, seed, epoch)
    plan = [rank_plan(shards, *args, r, shuffle_buffer) for r in range(world_size)]
    n = sum(s.records for s in shards)
    assert sum(len(b) for p in plan for b in p) == n, f"plan does not cover all {n} records"
    return plan


def collate(records: list[TrajectoryRecord]) -> dict:
    """Batch of records -> dict of two flat tensors, `theta` and `support` (support sets
    concatenated), and small numpy arrays: `loss`, `labels`, and `sizes`, which says where each
    record's support ends; `split_support` gives the support sets back per record.

    From a DataLoader worker (with `collate_fn=keep`) each tensor crosses as one shared-memory
    block and the numpy arrays pickled inline: a shared tensor costs the trainer ~0.4 ms to
    receive whatever its size, so only the two large arrays are worth one."""
    return {
        "ids": [r.id for r in records],
        # torch casts float16 -> float32 several times faster than numpy does
        "theta": torch.from_numpy(np.stack([r.theta for r in records])).to(torch.float32),
        "support": torch.from_numpy(np.concatenate([r.support for r in records])),  # uint8
        "loss": np.stack([r.loss for r in records]),  # float32 [B, T+1]
        "labels": np.concatenate([r.labels for r in records]),  # int64 [sum N]
        "sizes": np.array([len(r.labels) for r in records]),  # int64 [B]: N of each record
    }  # theta float32 [B, T+1, P]; support [sum N, C, H, W]


def keep(batch):
    """DataLoader collate_fn for streams that batch themselves: the batch as it is (the default
    would turn collate()'s small numpy arrays into shared-memory tensors)."""
    return batch


def split_support(batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per record (support uint8 [N_i, C, H, W], labels int64 [N_i]) of a collate() batch."""
    sizes = batch["sizes"].tolist()
    labels = torch.as_tensor(batch["labels"])  # numpy from collate(); a tensor also works
    return list(batch["support"].split(sizes)), list(labels.split(sizes))


class RecordStream(IterableDataset):
    """One rank's batches of one epoch, as collate() dicts (record lists if collated=False).

    Use `DataLoader(stream, batch_size=None, num_workers=k, collate_fn=keep)`: the stream
    batches itself.
    len(stream) is the number of batches, equal on every rank. Call set_epoch(e) before each
    epoch (with persistent_workers=True the workers would keep their old copy: don't), or
    wrap the stream in an EpochStream to run through the epochs with one DataLoader.
    """

    def __init__(
        self,
        root: str,
        fmt: str,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int,
        shuffle_buffer: int = 256,
        epoch: int = 0,
        collated: bool = True,
        max_records: int = 0,
        shares: int | None = None,
    ):
        m = Manifest.load(root)
        if fmt not in STORES or fmt not in m.formats:
            raise UserError(f"store {m.root} has formats {m.formats}, not {fmt!r}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} not in [0, world_size={world_size})")
        shares = world_size if shares is None else shares
        if shares < world_size:
            raise UserError(f"{shares} data shares cannot feed world_size {world_size}")
        # the URL (a string) goes to the loader workers; each opens the storage itself
        self.root, self.fmt, self.rank, self.world_size = m.root, fmt, rank, world_size
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.epoch, self.collated = epoch, collated
        self.shares = shares
        self.mine = list(range(rank, shares, world_size))  # the virtual ranks this rank serves
        self.start = 0  # batches of this epoch to skip (resuming mid-epoch)
        # fixed at construction: later commits wait a restart
        self.shards = first_records(m.shards_of(fmt), max_records)
        self.plan()  # fail early

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Stream epoch `epoch` from its batch `start` on (0 <= start <= len(self))."""
        if not 0 <= start <= len(self):
            raise UserError(f"start batch {start} not in [0, {len(self)}] (batches per epoch)")
        self.epoch, self.start = epoch, start

    def plan(self, epoch: int | None = None) -> list[list[tuple[str, int]]]:
        """This rank's batches for `epoch` (default: the current one)."""
        return self._plans(self.epoch if epoch is None else epoch)[0]

    def _plans(self, epoch: int) -> tuple[list[list[tuple[str, int]]], list[int]]:
        # (this rank's batches, records of each step over every share)
        args = (self.shares, self.batch_size, self.seed, epoch)
        plans = [rank_plan(self.shards, *args, v, self.shuffle_buffer) for v in range(self.shares)]
        mine = [sum((plans[v][j] for v in self.mine), []) for j in range(len(self))]
        return mine, [sum(len(p[j]) for p in plans) for j in range(len(self))]

    def __len__(self) -> int:
        n = sum(s.records for s in self.shards)
        return math.ceil(math.ceil(n / self.shares) / self.batch_size)

    def __iter__(self):
        wid, nw = _worker()
        plan, sizes = self._plans(self.epoch)
        picked = list(range(self.start, len(plan)))[wid::nw]
        for j, records in zip(picked, self._read(self.epoch, [plan[j] for j in picked])):
            yield self._batch(records, sizes[j])

    def _batch(self, records: list[TrajectoryRecord], in_step: int):
        if not self.collated:
            return records
        return {**collate(records), "records_in_step": in_step}

    def _read(self, epoch: int, batches: list[list[tuple[str, int]]]):
        """Yield the records of `batches` (of epoch `epoch`), batch by batch, reading them in the
        epoch's read sequence: each shard opened once, front to back; a record waits in memory
        until its batch is complete."""
        where = {x: j for j, batch in enumerate(batches) for x in batch}  # record -> batch
        seq = [
            x
            for v in self.mine
            for x in _read_sequence(self.shards, self.shares, self.seed, epoch, v)
        ]
        position = {x: k for k, x in enumerate(seq)}  # when this epoch reads each record
        pending: list[dict] = [{} for _ in batches]  # batch -> {record key: record}
        done, reader, current = 0, None, None
        try:
            for name, i in sorted(where, key=position.__getitem__):
                if name != current:  # sorted by shard: each shard is opened once
                    if reader is not None:
                        reader.close()
                    reader, current = open_shard(self.root, self.fmt, name), name
                j = where[(name, i)]
                pending[j][(name, i)] = reader.read(i)
                while done < len(batches) and len(pending[done]) == len(batches[done]):
                    records = [pending[done][x] for x in batches[done]]
                    pending[done] = {}
                    done += 1
                    yield records
        finally:
            if reader is not None:
                reader.close()
        assert done == len(batches), f"emitted {done} of {len(batches)} batches"


class EpochStream(IterableDataset):
    """Consecutive epochs of a RecordStream from batch `start` of `epoch` on, without end.

    One DataLoader (and its workers) then serves a whole training run, and a worker reads into
    the next epoch while the trainer finishes the current one; a new DataLoader per epoch waits
    for new workers and for a refilled shuffle buffer at every epoch start. Yields
    (epoch, batch index within the epoch, batch) in plan order: with k workers, worker i serves
    batches i, i + k, ... of the whole run's sequence, which the DataLoader's round-robin
    reassembles. Batches as the stream's `collated` says.
    """

    def __init__(self, stream: RecordStream, epoch: int = 0, start: int = 0):
        if not 0 <= start <= len(stream):
            raise UserError(f"start batch {start} not in [0, {len(stream)}] (batches per epoch)")
        self.stream, self.epoch, self.start = stream, epoch, start

    def __iter__(self):
        wid, nw = _worker()
        s = self.stream
        first = 0  # position of this epoch's first batch in the run's sequence
        epoch, start = self.epoch, self.start
        while True:
            plan, sizes = s._plans(epoch)
            plan, sizes = plan[start:], sizes[start:]
            mine = [j for j in range(len(plan)) if (first + j) % nw == wid]
            for k, records in enumerate(s._read(epoch, [plan[j] for j in mine])):
                yield epoch, start + mine[k], s._batch(records, sizes[mine[k]])
            first += len(plan)
            epoch, start = epoch + 1, 0


def _worker() -> tuple[int, int]:
    """(DataLoader worker id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
