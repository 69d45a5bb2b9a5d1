"""Simulator throughput: the per-episode reference loop against the batched (folded) simulator."""

from __future__ import annotations

import time

import torch

from hyperflow.adapt.simulate import initial_theta, simulate, simulate_loop
from hyperflow.config import load_config
from hyperflow.data import load_dataset
from hyperflow.data.episodes import EpisodeSampler, build_episode
from hyperflow.model import TargetModel, load_target


def setup(args):
    """Model, base-domain episodes and the config shared by the simulator benchmarks."""
    cfg = load_config(args.config, args.set)
    model = load_target(args.target) if args.target else TargetModel(cfg.target).eval()
    data = load_dataset(
        cfg.data.dataset, model.cfg.image_size, model.cfg.channels, cfg.data.cache_dir
    )
    ec = cfg.episodes
    sampler = EpisodeSampler(data, data.names("base"), ec.way, ec.shot, ec.query, seed=7)
    episodes = [build_episode(data, sampler.spec(i)) for i in range(args.episodes)]
    return cfg, model, episodes


def bench(args) -> dict:
    cfg, model, episodes = setup(args)
    steps, lr, n = cfg.adapt.steps, 0.03, len(episodes)
    theta0 = initial_theta(model, n, 0.0, torch.Generator().manual_seed(0))
    seeds = list(range(n))
    simulate(model, episodes[:2], theta0[:2], torch.full((2,), lr), 2, seeds[:2])  # warm-up

    start = time.perf_counter()
    loop = [
        simulate_loop(model, ep, theta0[i], lr, steps, seeds[i]) for i, ep in enumerate(episodes)
    ]
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = simulate(model, episodes, theta0, torch.full((n,), lr), steps, seeds)
    batched_s = time.perf_counter() - start

    loop_theta = torch.cat([t.theta for t in loop])
    return {
        "bench": "simulate",
        "backbone": model.cfg.backbone,
        "P": model.layout.size,
        "T": steps,
        "episodes": n,
        "threads": torch.get_num_threads(),
        "loop_traj_per_s": n / loop_s,
        "batched_traj_per_s": n / batched_s,
        "batched_over_loop": loop_s / batched_s,
        "max_abs_theta_diff": (loop_theta - batched.theta).abs().max().item(),
    }
