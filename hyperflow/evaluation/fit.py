"""How well drift networks fit trajectories: the training objective on a store's records.

    python -m hyperflow.evaluation.fit --target DIR --store STORE --drift A --drift B ...

For each drift, the mean of `drift_loss` (per-layer normalised velocity error, the quantity
training minimises) over the store's first --records records, with `draws` times t per trajectory
from one seeded generator, so every drift sees the same (record, t) pairs and their losses compare
pairwise. On records a drift was trained on this is its training fit; on a store none of them saw
(another collect.seed) it is generalisation within the collected task distribution, which tells
an under-fit network (both high) from one that fits but transfers poorly to held-out shifts.
The loss uses the drift's own normalisers, so compare drifts trained on the same store.
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import torch

from engine.stores import read_records
from hyperflow.adapt.hyperflow import load_for_target
from hyperflow.drift.objective import drift_loss
from hyperflow.errors import UserError
from hyperflow.model import load_target


@torch.inference_mode()
def measure(
    drifts: list[str], target: str, store: str, records: int = 200, draws: int = 8, seed: int = 0
) -> dict:
    """fit_records() of the drift directories on the store's first `records` records."""
    model = load_target(target).eval()
    nets = {d: load_for_target(d, model).eval() for d in drifts}
    rows = itertools.islice(read_records(store), records)
    return {"store": store, **fit_records(model, nets, rows, draws, seed)}


@torch.inference_mode()
def fit_records(model, nets: dict, records, draws: int = 8, seed: int = 0) -> dict:
    """{"records", "draws", "loss": {name: mean loss}, "loss_ci95": {name: half-width over
    records}, "minus_first": {name: its loss minus the first net's, paired over records, with
    "ci95"}} of the drift networks `nets` {name: DriftNet} on TrajectoryRecords (module
    docstring)."""
    per_record = {d: [] for d in nets}  # mean loss of each record, per drift
    for i, rec in enumerate(records):
        x = model.preprocess(torch.from_numpy(rec.support))
        y = torch.from_numpy(rec.labels)
        knots = torch.from_numpy(rec.theta).float().unsqueeze(0)  # [1, T+1, P]
        for d, net in nets.items():
            task = net.encode_tasks([(x, y)])
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)  # same t draws per drift
            losses = [drift_loss(net, knots, task, net.cfg.interpolant, gen) for _ in range(draws)]
            per_record[d].append(float(torch.stack(losses).mean()))
    n = len(next(iter(per_record.values())))
    if n < 2:
        raise UserError(f"{n} records to score; the fit needs at least 2")
    first = np.array(next(iter(per_record.values())))
    diffs = {d: np.array(v) - first for d, v in per_record.items()}
    return {
        "records": n,
        "draws": draws,
        "loss": {d: float(np.mean(v)) for d, v in per_record.items()},
        "loss_ci95": {d: half_width(v) for d, v in per_record.items()},
        "minus_first": {
            d: {"mean": float(v.mean()), "ci95": half_width(v)} for d, v in diffs.items()
        },
    }


def half_width(values) -> float:
    """Half-width of the normal 95% interval of the mean of `values` (one per record or pair)."""
    return float(1.96 * np.std(values, ddof=1) / np.sqrt(len(values)))


def add_record_args(p: argparse.ArgumentParser, records: int, store_help: str) -> None:
    """--target, --store, --records, --draws and --seed: what a measurement on a store's first
    records takes (this module's and evaluation/spread.py's)."""
    p.add_argument("--target", required=True, help="the target the store was collected with")
    p.add_argument("--store", required=True, help=store_help)
    p.add_argument("--records", type=int, default=records, help="the store's first N records")
    p.add_argument("--draws", type=int, default=8, help="times t per record (or pair)")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--drift", action="append", required=True, help="a drift directory; repeat")
    add_record_args(p, 200, "the records to score")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # beside a trainer, two processes of 2 threads thrash 2 cores
    if a.records < 2 or a.draws < 1:
        raise SystemExit(f"--records must be >= 2 and --draws >= 1, got {a.records}, {a.draws}")
    print(json.dumps(measure(a.drift, a.target, a.store, a.records, a.draws, a.seed), indent=1))


if __name__ == "__main__":
    main()
