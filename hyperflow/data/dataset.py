"""The dataset model every loader returns: named domains of uint8 images with class labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyperflow.errors import UserError

SPLITS = ("base", "heldout")


@dataclass
class Domain:
    name: str  # e.g. "latin", "georgian-noise"
    split: str  # "base" (pretraining, trajectory collection) | "heldout" (evaluation only)
    family: str  # image-shift family baked into this domain's images, "clean" if none
    images: np.ndarray  # uint8 [M, C, H, W]
    labels: np.ndarray  # int64 [M], index into class_names
    class_names: list[str]

    def __post_init__(self):
        assert self.split in SPLITS, f"domain {self.name!r}: split {self.split!r} not in {SPLITS}"
        assert self.images.dtype == np.uint8 and self.images.ndim == 4, (
            f"domain {self.name!r}: images must be uint8 [M, C, H, W], "
            f"got {self.images.dtype} {self.images.shape}"
        )
        assert self.labels.dtype == np.int64 and self.labels.shape == (len(self.images),), (
            f"domain {self.name!r}: labels must be int64 [{len(self.images)}], "
            f"got {self.labels.dtype} {self.labels.shape}"
        )
        assert len(self.labels) == 0 or 0 <= self.labels.min() <= self.labels.max() < len(
            self.class_names
        ), f"domain {self.name!r}: labels outside 0..{len(self.class_names) - 1}"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Dataset:
    spec: str  # the spec string it was loaded from
    domains: dict[str, Domain]  # ordered: base domains first for built-in datasets

    def names(self, split: str | None = None) -> list[str]:
        """Domain names in order, optionally only those of one split."""
        if split is not None and split not in SPLITS:
            raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return [n for n, d in self.domains.items() if split is None or d.split == split]

    def domain(self, name: str) -> Domain:
        """The domain called name; UserError listing the valid names otherwise."""
        if name not in self.domains:
            raise UserError(
                f"unknown domain {name!r} in dataset {self.spec!r}; "
                f"valid: {', '.join(self.domains)}"
            )
        return self.domains[name]
