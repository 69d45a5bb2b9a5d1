"""The procedural task space: reproducible, recorded, and within the benchmark's rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from hyperflow.data.episodes import EpisodeSampler, EpisodeSpec, build_episode, sample_episode
from hyperflow.data.primitives import NOISE, PRIMITIVES
from hyperflow.data.procedural import (
    Primitive,
    apply_composition,
    check_exclude,
    episode_composition,
)
from hyperflow.data.shifts import COLLECTION_SHIFTS, apply_shift
from hyperflow.errors import UserError

# resolution ops move ink by up to half a block (sampling, not a displacement field)
SAMPLING = {"block", "resample"}


def _apply(name: str, images: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return apply_composition(images, [Primitive(name, PRIMITIVES[name].draw(rng))], rng)


def test_the_pool_is_wide_and_collection_may_draw_the_family():
    assert len(PRIMITIVES) >= 10
    assert "procedural" in COLLECTION_SHIFTS
    names = {p.name for s in range(300) for p in episode_composition(s)}
    assert names == set(PRIMITIVES), "every primitive occurs"
    for s in range(50):
        steps = [p.name for p in episode_composition(s)]
        assert 2 <= len(steps) <= 4 and len(set(steps)) == len(steps)
    orders = {tuple(p.name for p in episode_composition(s)) for s in range(300)}
    assert len(orders) > 250, "compositions and their orders vary"


def test_a_composition_is_reproducible_from_the_seed_and_episodes_differ(tiny_dataset):
    assert episode_composition(7) == episode_composition(7)
    assert episode_composition(7) != episode_composition(8)
    alpha = tiny_dataset.domains["alpha"]
    a = sample_episode(alpha, 7, 5, 2, 3, "procedural")
    b = sample_episode(alpha, 8, 5, 2, 3, "procedural")
    assert a.composition == episode_composition(7)
    x1, x2 = build_episode(tiny_dataset, a), build_episode(tiny_dataset, a)
    assert np.array_equal(x1.support_x, x2.support_x) and np.array_equal(x1.query_x, x2.query_x)
    assert not np.array_equal(x1.support_x, build_episode(tiny_dataset, b).support_x)
    # the same images are picked as for any other family: only the shift differs
    plain = sample_episode(alpha, 7, 5, 2, 3, "noise")
    assert (plain.classes, plain.support, plain.query) == (a.classes, a.support, a.query)


def test_the_recorded_composition_is_what_replays(tiny_dataset):
    alpha = tiny_dataset.domains["alpha"]
    spec = sample_episode(alpha, 3, 5, 2, 3, "procedural", exclude=("affine", "morphology"))
    record = spec.to_dict()  # what a trajectory record stores
    assert [p["name"] for p in record["composition"]] == [p.name for p in spec.composition]
    again = EpisodeSpec.from_json(spec.to_json())
    assert again == spec
    ep, replay = build_episode(tiny_dataset, spec), build_episode(tiny_dataset, again)
    assert np.array_equal(ep.support_x, replay.support_x)
    # the record, not the seed alone, decides: another composition gives other images
    other = EpisodeSpec.from_dict({**record, "composition": record["composition"][:1]})
    assert not np.array_equal(ep.support_x, build_episode(tiny_dataset, other).support_x)


def test_other_specs_serialise_as_before(tiny_dataset):
    spec = sample_episode(tiny_dataset.domains["alpha"], 3, 5, 2, 3, "noise")
    assert "composition" not in spec.to_dict() and spec.composition == ()
    old = {"domain": "alpha", "classes": [0], "support": [0], "query": [1], "shift": None}
    assert EpisodeSpec.from_dict(old).composition == ()  # records of older stores


def test_excluded_primitives_are_never_drawn(tiny_dataset):
    sampler = EpisodeSampler(tiny_dataset, ["alpha", "beta"], 5, 2, 3, seed=0,
                             shifts=("procedural",), exclude=("affine", "morphology"))  # fmt: skip
    drawn = {p.name for i in range(200) for p in sampler.spec(i).composition}
    assert drawn == set(PRIMITIVES) - {"affine", "morphology"}
    with pytest.raises(UserError, match="warp"):
        check_exclude(["warp"])
    with pytest.raises(UserError, match="fewer than 4"):
        check_exclude(list(PRIMITIVES)[:-3])


def test_counts_set_how_many_primitives_an_episode_composes(tiny_dataset):
    # collect.procedural_counts reaches the sampler; the default draws what stores always drew
    def sizes(counts):
        sampler = EpisodeSampler(tiny_dataset, ["alpha"], 5, 2, 3, seed=0,
                                 shifts=("procedural",), counts=counts)  # fmt: skip
        return [len(sampler.spec(i).composition) for i in range(300)]

    default = EpisodeSampler(tiny_dataset, ["alpha"], 5, 2, 3, seed=0, shifts=("procedural",))
    assert [len(default.spec(i).composition) for i in range(300)] == sizes((2, 4))
    assert set(sizes((2, 4))) == {2, 3, 4}
    singles = sizes((1, 4))
    assert set(singles) == {1, 2, 3, 4} and 50 < singles.count(1) < 100  # ~1/4 of 300
    assert set(sizes((1, 1))) == {1}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_no_primitive_flips_polarity(name, glyph_like):
    x = glyph_like(32)
    ink, bg = x[:, 0] > 0, x[:, 0] == 0
    for seed in range(4):  # several episode-level draws, 32 images each
        out = _apply(name, x, seed).astype(np.float32)[:, 0]
        gap = [o[i].mean() - o[b].mean() for o, i, b in zip(out, ink, bg)]
        assert np.mean(np.array(gap) > 5) >= 0.95, (name, seed, np.min(gap))
    inverted = apply_shift("invert", x, 0).astype(np.float32)[:, 0]
    assert all(o[i].mean() < o[b].mean() for o, i, b in zip(inverted, ink, bg)), "the test bites"


@pytest.mark.parametrize("name", sorted(set(PRIMITIVES) - NOISE))
def test_nothing_is_drawn_on_a_flat_background(name, glyph_like):
    # far from the ink the background stays flat (one level per image; global tone maps may move
    # that level); only image-wide noise is exempt. Affine moves the ink itself: a blank image
    # must stay blank under it
    x = glyph_like(32)
    far = ndimage.distance_transform_edt(x[:, 0] == 0, sampling=(1e9, 1, 1)) > 7
    assert far.any(axis=(1, 2)).all()
    for seed in range(4):
        out = _apply(name, x, seed).astype(np.int32)[:, 0]
        if name != "affine":
            spread = [np.ptp(o[f]) for o, f in zip(out, far)]
            assert max(spread) <= 1, (name, seed, max(spread))
        blank = _apply(name, np.full((4, 1, 32, 32), 9, np.uint8), seed)
        assert np.ptp(blank.reshape(4, -1), axis=1).max() <= 1, (name, seed)
    clutter = apply_shift("clutter", x, 0).astype(np.int32)[:, 0]
    assert max(np.ptp(o[f]) for o, f in zip(clutter, far)) > 1, "the test bites"


def _dot_images(side: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """9 images of one 3x3 dot each on a 3x3 lattice, uint8 [9, 1, side, side]; dots [9, yx]."""
    pts = np.array([(y, x) for y in (16, 32, 48) for x in (16, 32, 48)], float) * side / 64
    images = np.zeros((9, 1, side, side), np.uint8)
    for im, (y, x) in zip(images, pts.astype(int)):
        im[:, y - 1 : y + 2, x - 1 : x + 2] = 255
    return images, pts


def _affine_residual(moved: np.ndarray, pts: np.ndarray) -> float:
    """RMS distance (px) of the dots' new centroids from the best global affine map of pts."""
    cents = []
    for im in moved[:, 0].astype(np.float64):
        w = np.maximum(im - np.median(im), 0)
        cents.append(ndimage.center_of_mass(w))
    a = np.c_[pts, np.ones(len(pts))]
    fit, *_ = np.linalg.lstsq(a, np.array(cents), rcond=None)
    return float(np.sqrt(((a @ fit - cents) ** 2).sum(axis=1).mean()))


@pytest.mark.parametrize("name", sorted(set(PRIMITIVES) - NOISE - SAMPLING - {"cutout"}))
def test_ink_moves_by_one_global_map_not_a_local_field(name):
    # each dot in its own image under the same draw (same seed, one image per call), so the dots
    # correspond; a global map moves them affinely, elastic (held out) does not
    images, pts = _dot_images()
    for seed in range(5):
        moved = np.concatenate([_apply(name, im[None], seed) for im in images])
        assert _affine_residual(moved, pts) < 0.25, (name, seed)
    warped = np.concatenate([apply_shift("elastic", im[None], s) for im in images for s in [0]])
    assert _affine_residual(warped, pts) > 0.5, "the test bites"
