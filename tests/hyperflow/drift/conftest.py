"""Fixtures for the drift tests: a hand-built bias layout and a tiny image encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperflow.bias import BiasEntry, BiasLayout

FEATURE_DIM = 16


def make_layout(sizes: list[tuple[int, ...]]) -> BiasLayout:
    entries, offset = [], 0
    for i, shape in enumerate(sizes):
        entry = BiasEntry(f"layer{i}.bias", offset, shape)
        entries.append(entry)
        offset += entry.numel
    return BiasLayout(tuple(entries))


class TinyEncoder(nn.Module):
    """[N, 1, 8, 8] -> [N, FEATURE_DIM]; has BatchNorm so train/eval mode matters."""

    feature_dim = FEATURE_DIM

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, FEATURE_DIM)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(nn.functional.avg_pool2d(h, 2).flatten(1))


@pytest.fixture(autouse=True)
def one_thread():
    # many tiny ops: on 2 (often shared) cores thread hand-offs cost more than they save
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def layout() -> BiasLayout:
    # repeated and distinct sizes, a 2-D entry, layouts out of size order
    return make_layout([(8,), (16,), (2, 6), (8,), (5,)])


@pytest.fixture
def encoder() -> nn.Module:
    torch.manual_seed(0)
    return TinyEncoder()


def make_support(way: int, shots: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x float [sum(shots), 1, 8, 8], y int64 with shots[c] images of class c (grouped)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((s,), c, dtype=torch.long) for c, s in enumerate(shots)])
    assert len(shots) == way
    centers = torch.randn(way, 1, 8, 8, generator=g)
    return centers[y] + 0.3 * torch.randn(len(y), 1, 8, 8, generator=g), y


@pytest.fixture
def support_factory():
    return make_support


@pytest.fixture
def layout_factory():
    return make_layout
