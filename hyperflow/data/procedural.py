"""The procedural shift family: every episode its own composition of image primitives.

An episode's composition is 2-4 primitives of PRIMITIVES (primitives.py; the range is
collect.procedural_counts, 1-4 at most) drawn without replacement, in random order, each with
continuous parameters, all from the episode's seed; every image of the episode then gets small
jitter around those parameters. The composition is recorded in the episode spec
(EpisodeSpec.composition), so a trajectory names exactly what it was tuned on and building the
spec replays it. Collection can leave primitives out (`exclude`, the config's
collect.procedural_exclude) to ablate those nearest a held-out family.

No primitive flips polarity, draws behind the glyph or displaces pixels locally (primitives.py),
so no composition reproduces the held-out families `invert`, `clutter` or `elastic`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hyperflow.data.primitives import PRIMITIVES, Params
from hyperflow.errors import UserError

PROCEDURAL_NAME = "procedural"  # the shift family's name in shifts.SHIFTS and in episode specs
MIN_PRIMITIVES, MAX_PRIMITIVES = 1, 4  # what collect.procedural_counts may ask for
PRIMITIVE_COUNTS = (2, 4)  # the default: fewest and most primitives of a composition
_COMPOSITION_STREAM = 3  # the episode seed's stream for drawing the composition


@dataclass(frozen=True)
class Primitive:
    """One step of a composition: a primitive's name and its episode-level parameters."""

    name: str
    params: Params = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: dict) -> Primitive:
        if set(d) != {"name", "params"} or d["name"] not in PRIMITIVES:
            raise UserError(f"not a procedural primitive: {d!r} (names: {sorted(PRIMITIVES)})")
        return cls(str(d["name"]), dict(d["params"]))


def check_exclude(exclude: Sequence[str]) -> tuple[str, ...]:
    """The excluded primitive names, refused by name if unknown or if fewer than MAX_PRIMITIVES
    would be left to compose."""
    unknown = sorted(set(exclude) - set(PRIMITIVES))
    if unknown:
        valid = sorted(PRIMITIVES)
        raise UserError(f"procedural primitives {unknown} unknown; choose from {valid}")
    if len(PRIMITIVES) - len(set(exclude)) < MAX_PRIMITIVES:
        left = len(PRIMITIVES) - len(set(exclude))
        raise UserError(f"excluding {sorted(exclude)} leaves {left} primitives, fewer than 4")
    return tuple(sorted(set(exclude)))


def draw_composition(
    rng: np.random.Generator,
    exclude: Sequence[str] = (),
    counts: tuple[int, int] = PRIMITIVE_COUNTS,
) -> tuple[Primitive, ...]:
    """counts[0]..counts[1] primitives not in `exclude`, in random order, with their parameters
    drawn from rng."""
    pool = [n for n in PRIMITIVES if n not in set(check_exclude(exclude))]
    k = int(rng.integers(counts[0], counts[1] + 1))
    names = [pool[i] for i in rng.choice(len(pool), k, replace=False)]
    return tuple(Primitive(n, PRIMITIVES[n].draw(rng)) for n in names)


def episode_composition(
    seed: int, exclude: Sequence[str] = (), counts: tuple[int, int] = PRIMITIVE_COUNTS
) -> tuple[Primitive, ...]:
    """The composition of the episode with this seed (what sampling records in its spec)."""
    return draw_composition(np.random.default_rng([seed, _COMPOSITION_STREAM]), exclude, counts)


def apply_composition(
    images: np.ndarray, composition: Sequence[Primitive], rng: np.random.Generator
) -> np.ndarray:
    """uint8 [N, C, H, W] through each primitive in order; per-image jitter drawn from rng."""
    assert images.dtype == np.uint8 and images.ndim == 4, f"uint8 [N,C,H,W], got {images.shape}"
    x = images.astype(np.float32) / 255.0
    for step in composition:
        x = np.clip(PRIMITIVES[step.name].apply(x, step.params, rng), 0.0, 1.0).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def procedural(images: np.ndarray, rng: np.random.Generator, _params=None) -> np.ndarray:
    """The family as shifts.SHIFTS calls it: one composition for the batch, drawn from rng."""
    return apply_composition(images, draw_composition(rng), rng)
