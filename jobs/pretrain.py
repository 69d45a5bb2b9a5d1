"""`hyperflow pretrain`: train the target backbone on the base domains with Accelerate.

Supervised cosine-classifier training over every base class (a fast route to ProtoNet-ready
features), with the same small random affine/contrast augmentation the adapters use. The learned
classifier scale becomes the ProtoNet logit scale.

`--nproc N` trains with N data-parallel ranks (and `--nnodes M --rdzv-endpoint HOST:PORT` across
machines; jobs.launch): each rank sees its share of every epoch's batches, and the loss goes
through the wrapped module's forward so that DDP syncs every gradient, the head's included.
`--workers N [--min-workers M] [--address ADDR]` runs the same ranks as a Ray Train run on a
cluster (jobs.train.ray_run; pretrain.cpus_per_worker / gpus_per_worker / max_failures). It
keeps no mid-run checkpoint (minutes of work): a lost worker restarts the attempt from the start,
and target.json records every attempt (`attempts`: world size, Ray node ids, cause of its end).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from hyperflow.adapt.augment import augment
from hyperflow.adapt.methods import accuracy, classify
from hyperflow.config import load_config, to_dict
from hyperflow.data import load_dataset
from hyperflow.data.episodes import EpisodeSampler, build_episode
from hyperflow.errors import UserError
from hyperflow.model import TargetModel, cosine_logits, save_target
from jobs.common import add_config_args, output
from jobs.launch import add_launch_arguments, needs_launch, relaunch
from jobs.train.command import add_ray_arguments, check_ray_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument(
        "--out",
        required=True,
        help="directory or URL (s3://bucket/prefix, ...) for target.safetensors + target.json",
    )
    add_launch_arguments(p)
    add_ray_arguments(p)


class _Classifier(torch.nn.Module):
    """Backbone + cosine head in one module: DDP only syncs what its forward uses."""

    def __init__(self, model: TargetModel, n_classes: int):
        super().__init__()
        self.model = model
        self.head = torch.nn.Parameter(torch.randn(n_classes, model.feature_dim) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x float [B, C, H, W] -> [B, classes]
        return self.model.logit_scale * cosine_logits(self.head, self.model.features(x))


def run(args: argparse.Namespace) -> None:
    # config: the model and data validate it before anything is written
    cfg = load_config(args.config, args.set)
    check_ray_arguments(args)
    TargetModel(cfg.target)
    data = load_dataset(
        cfg.data.dataset, cfg.target.image_size, cfg.target.channels, cfg.data.cache_dir
    )
    if not data.names("base"):
        raise UserError(f"dataset {cfg.data.dataset!r} has no base domains to pretrain on")
    out = output(args.out)  # a bad path, bucket or credentials: exit 2 before training

    # setup: where the ranks run
    if args.workers:
        from engine.pool import connect
        from jobs.train.ray_run import Resources, run_workers, worker_argv

        connect(args.address)
        config = {"argv": worker_argv(args.argv), "resume": False}
        res = Resources.of(cfg.pretrain)
        run_workers(_ray_worker, config, out, args.workers, args.min_workers, res)
        return
    if needs_launch(args):
        sys.exit(relaunch(args))
    pretrain_rank(args, cfg)


def _ray_worker(config: dict) -> None:
    from jobs.cli import build_parser
    from jobs.train.ray_run import RayRun

    args = build_parser(only="pretrain").parse_args(config["argv"])
    pretrain_rank(args, load_config(args.config, args.set), RayRun(0, args.out))


def pretrain_rank(args, cfg, ray_run=None) -> None:
    """One rank of a pretraining run (this process alone, a torchrun rank or a Ray Train
    worker, `ray_run`: jobs.train.ray_run.RayRun)."""
    pc = cfg.pretrain
    set_seed(pc.seed)
    model = TargetModel(cfg.target)
    data = load_dataset(
        cfg.data.dataset, cfg.target.image_size, cfg.target.channels, cfg.data.cache_dir
    )
    base = data.names("base")
    images, labels, n_classes = _pool(data, base)
    out = output(args.out)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    attempts = None
    if ray_run is not None:
        attempts = ray_run.checkpoints(accelerator, {}, {}).attempts  # this attempt recorded
    net = _Classifier(model, n_classes)
    params = [{"params": model.parameters()}, {"params": [net.head], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=pc.lr, weight_decay=pc.weight_decay)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels)),
        batch_size=pc.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(pc.seed),
    )
    total = pc.epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=pc.lr, total_steps=total, pct_start=0.1)
    net, opt, loader, sched = accelerator.prepare(net, opt, loader, sched)
    # augmentations differ per rank, as the batches do
    gen = torch.Generator().manual_seed(pc.seed + accelerator.process_index)
    accelerator.print(
        f"pretrain {cfg.target.backbone} on {len(base)} base domains, {n_classes} classes, "
        f"{len(images)} images, P={model.layout.size} biases, "
        f"world size {accelerator.num_processes}"
    )

    # loop
    start, step = time.time(), 0
    # this rank's steps: prepare() split the loader's batches over the ranks
    bar = tqdm(
        total=pc.epochs * len(loader), desc="pretrain", disable=not accelerator.is_main_process
    )
    out_of_time = False
    for epoch in range(pc.epochs):
        net.train()
        for x, y in loader:
            x = augment(TargetModel.preprocess(x).cpu(), gen).to(accelerator.device)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            accelerator.backward(loss)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.item():.1f}")
            # every rank must stop at the same step, or the others wait in the next all-reduce
            out_of_time = _any_rank(accelerator, time.time() - start > pc.max_seconds)
            if out_of_time:
                break
        if out_of_time:
            accelerator.print(f"stopping in epoch {epoch + 1}: max_seconds={pc.max_seconds}")
            break
    bar.close()
    seconds = time.time() - start

    model = accelerator.unwrap_model(net).model.cpu().eval()
    if accelerator.is_main_process:  # one writer: every rank holds the same weights
        val = _episode_accuracy(model, data, base, cfg)
        print(f"5-way {cfg.episodes.shot}-shot accuracy on base domains: {val:.3f}")
        extra = {
            "dataset": cfg.data.dataset,
            "base_domains": base,
            "steps": step,
            "world_size": accelerator.num_processes,
            **({"attempts": attempts} if attempts is not None else {}),
            "train_seconds": round(seconds, 1),
            "base_episode_acc": round(val, 4),
            "run_config": to_dict(cfg),
        }
        save_target(model, out.url, extra)
        print(f"wrote {out.url}/target.safetensors ({step} steps, {seconds:.0f} s)")


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def _pool(data, domains: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """All images of the given domains with globally unique class ids."""
    xs, ys, offset = [], [], 0
    for name in domains:
        d = data.domains[name]
        xs.append(d.images)
        ys.append(d.labels + offset)
        offset += len(d.class_names)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), offset


@torch.no_grad()
def _episode_accuracy(model, data, domains, cfg, n: int = 20) -> float:
    ec = cfg.episodes
    sampler = EpisodeSampler(data, domains, ec.way, ec.shot, ec.query, seed=12345)
    accs = [
        accuracy(classify(model, ep), ep.query_y)
        for ep in (build_episode(data, sampler.spec(i)) for i in range(n))
    ]
    return float(np.mean(accs))
