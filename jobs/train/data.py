"""What both trainers (drift and SMAT) read: one rank's RecordStream, the DataLoader over all its
epochs, and the warmup-cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from engine.stream import EpochStream, RecordStream, keep


def record_stream(store: str, tc, rank: int, world: int, batch_size: int, seed: int, shares=None):
    """This rank's share of the store's first train.max_records records (all when 0), in
    batches of `batch_size`, shuffled from `seed` (the data order of the run signature), planned
    over `shares` data shares (default: one per rank; engine.stream, elastic runs)."""
    return RecordStream(
        store,
        tc.format,
        rank,
        world,
        batch_size,
        seed,
        shuffle_buffer=tc.shuffle_buffer,
        max_records=tc.max_records,
        shares=shares,
    )


def loader(stream: EpochStream, workers: int) -> DataLoader:
    """One DataLoader over every epoch of `stream` (`workers` processes, train.loader_workers)."""
    if not workers:
        return DataLoader(stream, batch_size=None, collate_fn=keep)
    # Batches cross from workers as shared-memory tensors. The default "file_descriptor"
    # strategy passes each tensor's fd over a socket: ~1 ms per tensor on the trainer's side,
    # measured here, 6 ms per 5-tensor batch against 1.8 ms with named segments (torch's
    # shm manager still unlinks them when the processes exit); 2 tensors: ~1 ms.
    torch.multiprocessing.set_sharing_strategy("file_system")
    # Each worker's first batch of an epoch needs ~shuffle_buffer / workers records read first:
    # let it run that far ahead so the read hides behind steps instead of stalling one.
    s = stream.stream
    ahead = math.ceil(s.shuffle_buffer / (s.batch_size * workers)) + 2
    return DataLoader(
        stream, batch_size=None, num_workers=workers, prefetch_factor=ahead, collate_fn=keep
    )


def warmup_cosine(warmup: int, total: int):
    """LambdaLR factor: linear warmup over `warmup` steps, then cosine to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor
