"""How much of the training target no function of the task can predict: the spread of its inits.

    python -m hyperflow.evaluation.spread --target DIR --store STORE --drift D [--records N]

With collect.sigma = 0 collection tunes each episode `collect.inits` times from the same
theta_0, on the same support set at the same learning rate; the runs differ only in the
augmentation drawn at each Adam step. At one t, two such paths have the same task, so a predictor
that sees only (task, t) gives both the same velocity. The best such predictor gives their mean,
and each path's error is then half their difference. So half the squared difference, scaled
as drift_loss scales it, estimates the variance of the velocity given (task, t): the part of the
objective that task conditioning cannot remove. The drift also sees theta, and theta differs
between the paths, so this bounds what (task, t) leaves unexplained, not what (theta, t, task)
leaves. Beside it: the drift's own loss on the same (pair, t) draws, and how far apart the two
paths' thetas are against how far they moved from theta_0.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch

from engine.stores import read_records
from hyperflow.adapt.hyperflow import load_for_target
from hyperflow.drift.objective import normalised_error
from hyperflow.errors import UserError
from hyperflow.evaluation.fit import add_record_args, half_width
from hyperflow.interpolants import interpolate
from hyperflow.model import load_target


def init_pairs(records) -> list[tuple]:
    """(init 0, init 1) records of every episode that has both, from sigma-0 inits: the
    records' meta carries episode_index, init and sigma."""
    by_episode = defaultdict(dict)
    for r in records:
        if r.meta.get("sigma", 0.0) == 0.0:
            by_episode[r.meta["episode_index"]][r.meta["init"]] = r
    return [(d[0], d[1]) for _, d in sorted(by_episode.items()) if 0 in d and 1 in d]


@torch.inference_mode()
def init_spread(model, net, pairs, draws: int = 8, seed: int = 0) -> dict:
    """{"pairs", "draws", "spread", "drift_loss" (each {"mean", "ci95"} over pairs), "share"
    (spread / drift_loss), "theta_gap" (mean |theta_a - theta_b| / |theta_a - theta_0| at the
    drawn t)} of the (init 0, init 1) record pairs (module docstring)."""
    if len(pairs) < 2:
        raise UserError(f"{len(pairs)} init pairs; the spread needs 2 or more (collect.inits >= 2)")
    spread, loss, gap = [], [], []
    for i, (a, b) in enumerate(pairs):
        knots = torch.from_numpy(np.stack([a.theta, b.theta])).float()  # [2, T+1, P]
        T = knots.shape[1] - 1
        assert T == net.horizon, f"records span T={T}, the drift was built for {net.horizon}"
        x, y = model.preprocess(torch.from_numpy(a.support)), torch.from_numpy(a.labels)
        task = net.encode_tasks([(x, y)])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        s = d = g = 0.0
        for _ in range(draws):
            t = (torch.rand(1, generator=gen) * T).expand(2)  # one t for both paths
            theta, v = interpolate(net.cfg.interpolant, knots, t)  # [2, P] each
            # the (task, t)-optimal prediction is the mean velocity; each path errs by half the gap
            mean = v.mean(dim=0, keepdim=True).expand_as(v)
            s += float(normalised_error(net, mean, v))
            pred = torch.cat([net(theta[k : k + 1], t[k : k + 1], task) for k in range(2)])
            d += float(normalised_error(net, pred, v))
            moved = (theta[0] - knots[0, 0]).norm().clamp_min(1e-12)
            g += float((theta[0] - theta[1]).norm() / moved)
        spread.append(s / draws)
        loss.append(d / draws)
        gap.append(g / draws)
    return {
        "pairs": len(pairs),
        "draws": draws,
        "spread": {"mean": float(np.mean(spread)), "ci95": half_width(spread)},
        "drift_loss": {"mean": float(np.mean(loss)), "ci95": half_width(loss)},
        "share": float(np.mean(spread) / np.mean(loss)),
        "theta_gap": float(np.mean(gap)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--drift", required=True, help="a drift directory trained on this store")
    add_record_args(p, 400, "the records, collected with inits >= 2")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # beside a trainer, two processes of 2 threads thrash 2 cores
    if a.records < 4 or a.draws < 1:
        raise SystemExit(f"--records must be >= 4 and --draws >= 1, got {a.records}, {a.draws}")
    model = load_target(a.target).eval()
    net = load_for_target(a.drift, model).eval()
    records = [r for _, r in zip(range(a.records), read_records(a.store))]
    out = {"store": a.store, "drift": a.drift, "records": len(records)}
    print(json.dumps({**out, **init_spread(model, net, init_pairs(records), a.draws, a.seed)}))


if __name__ == "__main__":
    main()
