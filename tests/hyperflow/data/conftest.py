"""Small synthetic datasets so episode and shift tests never need the glyph build."""

import numpy as np
import pytest

from hyperflow.data.dataset import Dataset, Domain


def _glyph_like(n: int, channels: int = 1, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [n, C, size, size]: bright random bars on black, like white-on-black glyphs."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, channels, size, size), dtype=np.uint8)
    for i in range(n):
        for _ in range(3):
            y, x = rng.integers(4, size - 12, size=2)
            h, w = (3, rng.integers(6, 12)) if rng.uniform() < 0.5 else (rng.integers(6, 12), 3)
            out[i, :, y : y + h, x : x + w] = 255
    return out


def _make_domain(name: str, classes: int, per_class: int, split: str = "base", seed: int = 0):
    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    # each image's top-left pixel stores its own index (mod 256) so tests can trace images
    images = _glyph_like(len(labels), seed=seed)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256
    return Domain(name, split, "clean", images, labels, [f"c{i}" for i in range(classes)])


@pytest.fixture
def glyph_like():
    """The _glyph_like image maker (a fixture, so tests never import conftest by name)."""
    return _glyph_like


@pytest.fixture
def tiny_dataset() -> Dataset:
    domains = [
        _make_domain("alpha", classes=8, per_class=12, seed=1),
        _make_domain("beta", classes=12, per_class=10, seed=2),
        _make_domain("gamma", classes=20, per_class=7, split="heldout", seed=3),
    ]
    return Dataset("tiny", {d.name: d for d in domains})
