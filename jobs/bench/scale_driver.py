"""The collection driver of `hyperflow bench scale`, run as its own process so that the bench can
SIGKILL it and measure its memory: the synthetic simulator on Ray actors into STORE, one JSON
line per event on stdout ({"event": "start" | "commit" | "done", "t": unix time, ...}).

    python -m jobs.bench.scale_driver STORE --records N --shard-records R --workers W --format F

With --stream-rank K --world W it instead opens STORE as rank K of W trainer ranks would
(RecordStream, a DataLoader with one worker) and prints {"event": "stream", "seconds": until the
first batch, "peak_rss": of this rank's process}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from engine.collect import collect
from engine.pool import connect
from engine.stores import open_store, remove_uncommitted, shard_name
from engine.synthetic import SyntheticSimulator

FORMATS = {"zarr": ["zarr"], "wds": ["wds"], "both": ["zarr", "wds"]}
# small P and tiny support images: a million records in a few GB
SIMULATOR = {"inits": 1, "T": 4, "P": 16, "image": (1, 4, 4), "n_support": (2, 2), "run": "s"}


def peak_rss(pid: str | int = "self") -> int:
    """Peak resident set size of a process in bytes (VmHWM), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _say(event: str, **fields) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--shard-records", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--format", choices=sorted(FORMATS), default="both")
    p.add_argument("--stream-rank", type=int)
    p.add_argument("--world", type=int, default=2)
    args = p.parse_args(argv)
    if args.stream_rank is not None:
        return _stream(args.store, FORMATS[args.format][-1], args.stream_rank, args.world)

    sim = {"episodes": args.records, "shard_size": args.shard_records, **SIMULATOR}
    formats = FORMATS[args.format]
    manifest = open_store(args.store, {"simulator": "synthetic", **sim}, formats)
    removed = remove_uncommitted(args.store)
    n_shards = SyntheticSimulator(**sim).shards()
    todo = [
        i for i in range(n_shards) if not all(manifest.committed(shard_name(i), f) for f in formats)
    ]
    _say("start", todo=len(todo), shards=n_shards, removed=len(removed))
    if todo:
        connect(None)
        writer = {"simulator": SyntheticSimulator, "simulator_kwargs": sim, "store": manifest.root}
        writer.update(formats=formats, threads=1)

        def progress(n: int, seconds: float) -> None:
            _say("commit", records=n, seconds=seconds)

        collect(manifest, todo, writer, args.workers, progress=progress)
    _say("done", peak_rss=peak_rss())


def _stream(store: str, fmt: str, rank: int, world: int) -> None:
    from torch.utils.data import DataLoader

    from engine.stream import RecordStream, keep

    start = time.perf_counter()
    stream = RecordStream(store, fmt, rank, world, batch_size=32, seed=0)
    batch = next(iter(DataLoader(stream, batch_size=None, num_workers=1, collate_fn=keep)))
    seconds = time.perf_counter() - start
    assert len(batch["ids"]) in (32, 31), f"unexpected first batch of {len(batch['ids'])}"
    _say("stream", rank=rank, seconds=seconds, batches=len(stream), peak_rss=peak_rss())


if __name__ == "__main__":
    sys.exit(main())
