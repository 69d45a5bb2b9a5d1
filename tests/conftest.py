"""Shared fixtures: a tiny untrained target model and synthetic episodes (no dataset build)."""

from __future__ import annotations

import pytest
import torch

from hyperflow.data.episodes import Episode, EpisodeSpec
from hyperflow.model import TargetConfig, TargetModel


@pytest.fixture(scope="session")
def tiny_model() -> TargetModel:
    torch.manual_seed(0)
    model = TargetModel(TargetConfig(backbone="test_resnet", channels=1, image_size=32)).eval()
    # non-trivial BatchNorm statistics so biases matter the way they do after training
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _make_episode(seed: int, way: int = 5, shot: int = 3, query: int = 4) -> Episode:
    """Synthetic episode: class-specific blobs plus noise, uint8 [N, 1, 32, 32]."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(way, 1, 32, 32, generator=g) * 255

    def draw(k):
        x = centers.repeat_interleave(k, 0) + 40 * torch.randn(way * k, 1, 32, 32, generator=g)
        return x.clamp(0, 255).to(torch.uint8), torch.arange(way).repeat_interleave(k)

    sx, sy = draw(shot)
    qx, qy = draw(query)
    spec = EpisodeSpec("synthetic", tuple(range(way)), tuple(range(way * shot)), (), None, seed)
    return Episode(spec, sx, sy, qx, qy)


@pytest.fixture
def make_episode():
    return _make_episode


@pytest.fixture
def episodes():
    return [_make_episode(s) for s in range(4)]
