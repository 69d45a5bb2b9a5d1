import numpy as np
import pytest

from hyperflow.data.shifts import COLLECTION_SHIFTS, SHIFTS, ShiftParams, apply_shift
from hyperflow.errors import UserError
from hyperflow.heldout import HELD_OUT_SHIFTS

NAMES = sorted(SHIFTS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shift_keeps_shape_and_dtype_and_changes_every_image(name, channels, glyph_like):
    images = glyph_like(16, channels=channels)
    out = apply_shift(name, images, seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    changed = (out != images).reshape(len(images), -1).any(axis=1)
    assert changed.mean() >= 0.75, f"{name} left {int((~changed).sum())} of 16 images unchanged"


@pytest.mark.parametrize("name", NAMES)
def test_shift_is_deterministic_for_a_seed(name, glyph_like):
    images = glyph_like(8)
    a, b = apply_shift(name, images, seed=3), apply_shift(name, images, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, apply_shift(name, images, seed=4))
    np.testing.assert_array_equal(images, glyph_like(8))  # input untouched


@pytest.mark.parametrize("name", NAMES)
def test_shift_parameters_vary_per_instance(name, glyph_like):
    images = np.repeat(glyph_like(1), 12, axis=0)  # 12 copies of one image
    out = apply_shift(name, images, seed=0)
    assert len({o.tobytes() for o in out}) > 1, f"{name} gave every copy the same parameters"


def test_shift_families_do_what_their_names_say(glyph_like):
    x = glyph_like(32)
    ink, bg = x[:, 0] > 0, x[:, 0] == 0
    f = {n: apply_shift(n, x, seed=0).astype(np.float32)[:, 0] for n in NAMES}
    assert f["noise"][bg].std() > 20  # background no longer flat
    assert f["invert"][bg].mean() > f["invert"][ink].mean() + 60  # dark glyph, bright ground
    ranges = f["contrast"].max(axis=(1, 2)) - f["contrast"].min(axis=(1, 2))
    assert ranges.max() <= 0.4 * 255 + 1  # contrast squeezed into <= 40% of the scale
    assert (f["clutter"] >= x[:, 0]).all() and f["clutter"][bg].mean() > 10  # behind the glyph
    assert (f["thick"] > 0).sum() != ink.sum()  # stroke area changed
    grad = lambda a: (np.diff(a, axis=-1) ** 2).mean()  # noqa: E731  edge energy
    assert grad(f["blur"]) < 0.5 * grad(x[:, 0].astype(np.float32))
    moved = (f["elastic"] > 127) != ink
    assert moved.mean() > 0.01  # strokes displaced
    for before, after in zip(x[:8, 0], f["tone"][:8]):  # one output level per input level
        assert all(np.ptp(after[before == v]) <= 1 for v in np.unique(before))
    assert (f["tone"][:, 0, 0] != 0).mean() > 0.5  # the background level moves


def test_stronger_params_shift_more(glyph_like):
    x = glyph_like(32)
    weak = apply_shift("noise", x, seed=0, params=ShiftParams(noise_std=(0.05, 0.05)))
    strong = apply_shift("noise", x, seed=0, params=ShiftParams(noise_std=(0.3, 0.3)))
    err = lambda a: np.abs(a.astype(np.float32) - x).mean()  # noqa: E731
    assert err(strong) > 3 * err(weak)


def test_unknown_shift_names_the_value_and_the_choices(glyph_like):
    with pytest.raises(UserError, match=r"'sparkle'.*noise"):
        apply_shift("sparkle", glyph_like(2), seed=0)


def test_collection_never_sees_the_held_out_families():
    assert set(COLLECTION_SHIFTS) < set(SHIFTS)
    assert HELD_OUT_SHIFTS == {"invert", "clutter", "elastic"} and HELD_OUT_SHIFTS < set(SHIFTS)
    assert not HELD_OUT_SHIFTS & set(COLLECTION_SHIFTS)
