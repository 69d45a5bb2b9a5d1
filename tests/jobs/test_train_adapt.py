"""Acceptance: a drift network trained by `hyperflow train` on real bias-tuning trajectories of the
tiny target lowers the support loss of new base-domain episodes when integrated from theta_0.

Trajectories are simulated in-process by the collection simulator itself (BiasTuningSimulator,
no Ray), on clean base-domain episodes, at the one learning rate the tiny config gives
bias-tuning, and the drift is trained with off-path theta noise (train.theta_noise). Measured: the
loss is lowered in 82.8% of the 64 new episodes, mean 0.3396 -> 0.2993; without theta noise and
with per-episode learning rates in [0.01, 0.1] it was 73.4%, 0.3396 -> 0.3334. A fresh install
of 2026-12-07 (its dependencies moved the loss at theta_0 to 0.3372; which one, not traced) gave
70.3%, 0.3372 -> 0.3046, the same at the commit before that session; the test asks for what the
drift is for at a level chance cannot reach: a sign test over episodes, and a 5% lower mean.
One intra-op thread throughout (shared 2-core machine).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine.stores import open_store, read_records, shard_name, write_shard
from hyperflow.adapt.hyperflow import adapted_theta, load_for_target
from hyperflow.adapt.simulate import simulate
from hyperflow.bias import get_theta
from hyperflow.config import load_config
from hyperflow.data import load_dataset
from hyperflow.data.episodes import build_episode
from hyperflow.model import load_target
from hyperflow.simulator import BiasTuningSimulator, CollectSpec

EPISODES = 128  # trajectories in the store (one init each); 64 measured 86-89%: overfits
HELD_OUT = 64  # new episodes: indices EPISODES.. of the same base-domain sampler
TRAIN_STEPS = 300
SOLVER_STEPS = 5  # Euler steps over [0, T]; T = 5 Adam steps in the tiny config
COLLECT_SETS = ["collect.shifts=[]", "collect.shard_size=16", "collect.inits=1"]


@pytest.fixture(scope="module")
def one_thread():
    """Simulation and adaptation in this process on one thread (collection actors do too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def collected(tiny_target, tmp_path_factory, one_thread):
    """(store, collector): EPISODES real trajectories written shard by shard as collect does."""
    cfg = load_config("tiny", COLLECT_SETS)
    root = tmp_path_factory.mktemp("adapt") / "store"
    model = load_target(tiny_target)
    data = load_dataset(cfg.data.dataset, model.cfg.image_size, model.cfg.channels, None)
    spec = CollectSpec.from_config(cfg, model, str(tiny_target), data.names("base"), "adapt")
    manifest = open_store(root, {**spec.manifest_config(), "episodes": EPISODES}, ["wds"])
    collector = BiasTuningSimulator(spec, str(tiny_target), None, EPISODES)
    for i in range(math.ceil(EPISODES / spec.shard_size)):
        manifest.commit(write_shard(root, "wds", shard_name(i), collector.records(i)))
    return root, collector


def test_trained_drift_lowers_support_loss_on_new_episodes(cli, tiny_target, collected, tmp_path):
    store, collector = collected
    out = tmp_path / "drift"
    sets = [f"train.steps={TRAIN_STEPS}", f"train.checkpoint_every={TRAIN_STEPS}"]
    argv = ["train", "--config", "tiny", "--store", str(store), "--target", str(tiny_target)]
    argv += ["--out", str(out), *[x for kv in sets for x in ("--set", kv)]]
    cli(*argv, env={"OMP_NUM_THREADS": "1"})

    model = load_target(tiny_target)
    net = load_for_target(str(out), model)
    stored = {json.dumps(r.episode, sort_keys=True) for r in read_records(store, "wds")}
    assert len(stored) == EPISODES
    specs = [collector.sampler.spec(e) for e in range(EPISODES, EPISODES + HELD_OUT)]
    assert not stored & {json.dumps(s.to_dict(), sort_keys=True) for s in specs}, "not held out"
    episodes = [build_episode(collector.data, s) for s in specs]

    # the simulator's own PMF support loss (prototypes from the clean support, cross-entropy of an
    # augmented copy), with the same augmentation seed at theta_0 and at theta_T
    n = len(episodes)
    theta0 = get_theta(model.backbone, model.layout).repeat(n, 1)
    theta_t = torch.stack([adapted_theta(model, net, ep, SOLVER_STEPS) for ep in episodes])
    seeds = list(range(n))
    before = simulate(model, episodes, theta0, torch.zeros(n), 0, seeds).loss[:, 0]
    after = simulate(model, episodes, theta_t, torch.zeros(n), 0, seeds).loss[:, 0]
    lowered = (after < before).float().mean().item()
    summary = (
        f"support loss lowered in {lowered:.1%} of {n} held-out episodes; mean "
        f"{before.mean():.4f} -> {after.mean():.4f}"
    )
    print(summary)
    # most new episodes, beyond chance: 42 of 64 has p ~ 0.01 under a coin flip (sign test)
    assert lowered >= 42 / 64, summary
    assert after.mean() < 0.95 * before.mean(), summary
