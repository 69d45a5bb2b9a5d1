"""`hyperflow pretrain --nproc 2`: two real gloo ranks under torchrun train one target.

Before the loss went through the wrapped module's forward, a second rank failed at once: the
DDP wrapper has no `features` or `logit_scale`.
"""

from __future__ import annotations

import json

import torch

from hyperflow.config import load_config
from hyperflow.data import load_dataset
from hyperflow.model import TargetModel, load_target
from jobs.pretrain import _episode_accuracy

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_two_ranks_split_the_batches_and_train_a_target_that_loads(cli, tiny_target, tmp_path):
    out = tmp_path / "target"
    proc = cli("pretrain", "--config", "tiny", "--out", str(out), "--nproc", "2", env=ONE_THREAD)
    assert "world size 2" in proc.stdout + proc.stderr

    two = json.loads((out / "target.json").read_text())
    one = json.loads((tiny_target / "target.json").read_text())
    assert two["world_size"] == 2
    # each rank took its half of every epoch's batches (DistributedSampler via Accelerate)
    assert two["steps"] == one["steps"] // 2, (two["steps"], one["steps"])

    model = load_target(out)  # the checkpoint loads as a plain target
    cfg = load_config("tiny")
    data = load_dataset(cfg.data.dataset, cfg.target.image_size, cfg.target.channels, None)
    base = data.names("base")
    torch.manual_seed(0)
    untrained = TargetModel(cfg.target).eval()
    before = _episode_accuracy(untrained, data, base, cfg)
    after = _episode_accuracy(model, data, base, cfg)
    assert abs(after - two["base_episode_acc"]) < 1e-3  # the reloaded weights are the trained ones
    # training with two ranks did what training is for: base episodes are classified better
    assert after > before + 0.1, (before, after)
