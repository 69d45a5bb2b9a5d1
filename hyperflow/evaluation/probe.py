"""Does the drift's conditioning see the task? A linear probe from what the drift network knows
of a support set to which procedural primitives made that episode.

`python -m hyperflow.evaluation.probe --drift DIR --target DIR --store URL [--episodes N]`

For each procedural episode of the store (one record per episode), three representations of its
support set are probed: the drift's task embedding (the trained prototype pooling), the drift's
normalised site statistics (when the drift has them), and, as the reference of what is there to
be seen, the frozen target's mean and std of each feature over the support images. A ridge
regression per representation predicts the multi-hot set of primitives; each primitive's AUC is
measured on episodes the probe was not fitted on (0.5: the representation does not tell whether
the primitive was applied). Prints a JSON document: mean AUC per representation and per-primitive
AUCs. If the embedding sits far below the target's own statistics, the conditioning discards
what the support set shows about its shift.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from engine.stores import read_records
from hyperflow.adapt.hyperflow import load_for_target
from hyperflow.data.primitives import PRIMITIVES
from hyperflow.errors import UserError
from hyperflow.model import load_target


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of scores [N] for boolean labels [N] (ties count one half);
    NaN when only one class occurs."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def probe(x: np.ndarray, y: np.ndarray, seed: int = 0, test: float = 0.3, l2: float = 1.0):
    """Fit a ridge probe x [N, D] -> y [N, K] (bool) on a random (1 - test) share of the rows;
    returns the AUC [K] of each column on the other rows."""
    assert x.ndim == 2 and y.ndim == 2 and len(x) == len(y), f"{x.shape=} {y.shape=}"
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(test * len(x))))
    te, tr = order[:n_test], order[n_test:]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6  # standardised with the fit rows only
    a, b = (x[tr] - mu) / sd, (x[te] - mu) / sd
    target = y[tr].astype(np.float64) - y[tr].mean(0)
    # dual form: D may be far larger than N (site statistics)
    alpha = np.linalg.solve(a @ a.T + l2 * len(tr) * np.eye(len(tr)), target)
    pred = b @ (a.T @ alpha)
    return np.array([auc(pred[:, k], y[te, k]) for k in range(y.shape[1])])


def _representations(model, net, support: np.ndarray, labels: np.ndarray) -> dict:
    x = model.preprocess(torch.from_numpy(support))
    y = torch.from_numpy(labels)
    feats = model.features(x).double()  # [Ns, F]
    task = net.encode_tasks([(x, y)])
    out = {
        "drift task embedding": task.embedding[0].double().numpy(),
        "target features (mean, std)": torch.cat([feats.mean(0), feats.std(0)]).numpy(),
    }
    if task.stats is not None:
        out["drift site statistics"] = task.stats[0].double().flatten().numpy()
    return out


@torch.inference_mode()
def measure(drift: str, target: str, store: str, episodes: int = 1000, seed: int = 0) -> dict:
    """Per-primitive AUCs of each representation on the store's first `episodes` procedural
    episodes (module docstring)."""
    model = load_target(target).eval()
    net = load_for_target(drift, model)
    result = probe_records(model, net, read_records(store), episodes, seed)
    return {"drift": drift, "store": store, **result}


@torch.inference_mode()
def probe_records(model, net, records, episodes: int = 1000, seed: int = 0) -> dict:
    """The probe of measure() over TrajectoryRecords (any iterable; one per episode is used)."""
    names = sorted(PRIMITIVES)
    reps: dict[str, list[np.ndarray]] = {}
    hot, seen = [], set()
    for rec in records:
        spec = rec.episode
        key = (spec["domain"], spec["seed"])  # the inits of one episode share its support set
        if spec.get("shift") != "procedural" or key in seen:
            continue
        seen.add(key)
        used = {p["name"] for p in spec["composition"]}
        hot.append([n in used for n in names])
        for k, v in _representations(model, net, rec.support, rec.labels).items():
            reps.setdefault(k, []).append(v)
        if len(hot) == episodes:
            break
    if len(hot) < 20:
        raise UserError(f"{len(hot)} procedural episodes found; the probe needs at least 20")
    y = np.array(hot, dtype=bool)
    result = {"episodes": len(y), "seed": seed}
    result["primitive_rate"] = {n: round(float(r), 3) for n, r in zip(names, y.mean(0))}
    result["representations"] = {}
    for name, rows in reps.items():
        aucs = probe(np.stack(rows), y, seed)
        result["representations"][name] = {
            "dim": int(rows[0].shape[0]),
            "mean_auc": round(float(np.nanmean(aucs)), 3),
            "auc": {n: round(float(a), 3) for n, a in zip(names, aucs)},
        }
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drift", required=True, help="a drift directory (drift.json inside)")
    p.add_argument("--target", required=True)
    p.add_argument(
        "--store", required=True, help="a store collected with collect.shifts=[procedural]"
    )
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(
        json.dumps(measure(args.drift, args.target, args.store, args.episodes, args.seed), indent=1)
    )


if __name__ == "__main__":
    main()
