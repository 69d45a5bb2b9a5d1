"""`hyperflow average --store SRC --out DST`: a store with one record per episode, the mean of its
collect.inits bias-tuning runs (engine/average.py: the drift's target without the runs'
disagreement). DST is an ordinary store: `train --store DST`, `sweep --store DST` and `inspect`
read it; its first N records are the first N episodes of SRC, so `train.max_records` nests as on
SRC. Shard by shard, each committed as it lands: a rerun after a kill resumes."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from engine.average import average_inits
from engine.errors import UserError
from engine.manifest import Manifest
from engine.storage import location
from engine.stores import open_store, read_shard, remove_uncommitted, write_shard
from engine.stores.encoding import DEFAULT_ENCODING


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="a store of `hyperflow collect` with inits >= 2")
    p.add_argument("--out", required=True, help="the averaged store: a directory or a URL")


def run(args: argparse.Namespace) -> None:
    # config
    src = Manifest.load(args.store)
    inits = src.config.get("inits")
    if not isinstance(inits, int) or inits < 2:
        raise UserError(f"store {src.root} has inits={inits!r}: nothing to average (needs >= 2)")
    out = location(args.out)
    if out.url == src.root:
        raise UserError(f"--out {args.out!r} is the source store itself")
    # one record per episode; `inits` says so to every reader of the config
    config = {**src.config, "inits": 1, "averaged_inits": inits}

    # setup
    dst = open_store(out, config, src.formats)
    remove_uncommitted(out)
    fmt = src.formats[0]  # every format holds the same records: read one, write each
    # as the source stored theta (stores from before collect.theta_encoding: the default)
    encoding = (
        config.get("theta_dtype", "float16"),
        config.get("theta_encoding", DEFAULT_ENCODING),
    )
    todo = [s for s in src.shards_of(fmt) if not all(dst.committed(s.name, f) for f in src.formats)]

    # loop
    written = 0
    for shard in tqdm(todo, desc="average", unit="shard"):
        try:
            records = list(average_inits(read_shard(src.loc, fmt, shard.name), inits))
        except ValueError as e:  # an episode split across shards, or not a collect store
            raise UserError(f"store {src.root}, shard {shard.name}: {e}") from None
        for f in src.formats:
            if not dst.committed(shard.name, f):
                dst.commit(write_shard(out, f, shard.name, records, *encoding))
        written += len(records)
    dst.compact()
    total = sum(s.records for s in dst.shards_of(fmt))
    print(
        f"averaged {inits} runs per episode: {written} records written, "
        f"{total} in {out.url} ({len(src.shards_of(fmt))} shards)"
    )
