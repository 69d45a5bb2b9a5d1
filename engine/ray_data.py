"""A store's WebDataset shards as a Ray Dataset, one row per trajectory record:

    ds = engine.ray_data.read_trajectories("s3://bucket/store")   # or a local path
    ds.map(lambda row: {"id": row["id"], "final_loss": row["loss"][-1]}).take(3)

`ray.data.read_webdataset` reads the committed shards of the manifest (never a half-written
one) through the storage layer's filesystem; `decode_sample` turns each sample's members into
columns: id, episode and meta as JSON text, support uint8 [N, C, H, W], labels int64 [N],
theta float32 [T+1, P] (decoded from its stored encoding) and loss float32 [T+1]. Ray's default
decoder knows neither gzip'd `.npy.gz` members nor the theta encodings, hence this decoder.

The Zarr side of a store has no Ray reader: `ray.data` reads Zarr v2 only. Read it with
`engine.stores.read_records(store, "zarr")` or plain zarr-python 3.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

from engine.manifest import Manifest
from engine.storage import location
from engine.stores.wds_store import ROOT, record_of


def decode_sample(sample: dict) -> dict:
    """One WebDataset sample (member extension -> raw bytes) -> a row of columns."""

    def member(ext: str) -> bytes:
        data = sample[ext]
        return zlib.decompress(data, wbits=31) if ext.endswith(".gz") else data

    r = record_of(member)
    return {
        "id": r.id,
        "episode": json.dumps(r.episode),
        "meta": json.dumps(r.meta),
        "support": r.support,
        "labels": r.labels,
        "theta": r.theta.astype(np.float32),
        "loss": r.loss,
    }


def read_trajectories(store: str, **read_args):
    """The committed WebDataset shards of `store` (a path or URL) as a ray.data.Dataset;
    `read_args` go to ray.data.read_webdataset (e.g. override_num_blocks)."""
    import pyarrow.fs
    import ray.data

    manifest = Manifest.load(store)
    loc = location(manifest.root)
    paths = [loc.path(f"{ROOT}/{s.name}.tar") for s in manifest.shards_of("wds")]
    fs = None if loc.local else pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(loc.fs))
    return ray.data.read_webdataset(paths, filesystem=fs, decoder=decode_sample, **read_args)
