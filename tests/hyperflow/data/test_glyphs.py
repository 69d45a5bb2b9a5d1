import time

import numpy as np
import pytest

from hyperflow.data import glyphs
from hyperflow.data.fonts import EXCLUDED_FONTS, font_coverage, font_files
from hyperflow.data.glyphs import DOMAINS, WIDE_DOMAINS, GlyphParams, load_glyphs
from hyperflow.data.shifts import SHIFTS

SMALL = GlyphParams(max_classes=4, images_per_class=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_glyphs(image_size=24, cache_dir=cache, params=SMALL), cache


def test_build_is_deterministic(small, tmp_path):
    first, _ = small
    again = load_glyphs(image_size=24, cache_dir=tmp_path, params=SMALL)  # fresh build
    assert list(first.domains) == list(again.domains)
    for name, d in first.domains.items():
        e = again.domains[name]
        assert d.images.tobytes() == e.images.tobytes(), name
        assert d.labels.tobytes() == e.labels.tobytes() and d.class_names == e.class_names


def test_cache_is_reused_and_keyed_by_params(small, monkeypatch, tmp_path):
    first, cache = small
    [path] = cache.glob("glyphs-*.npz")
    monkeypatch.setattr(glyphs, "_build", lambda *a: pytest.fail("rebuilt despite a cache"))
    t0 = time.perf_counter()
    again = load_glyphs(image_size=24, cache_dir=cache, params=SMALL)
    assert time.perf_counter() - t0 < 2.0
    assert again.domains["latin"].images.tobytes() == first.domains["latin"].images.tobytes()
    monkeypatch.undo()
    load_glyphs(
        image_size=24, cache_dir=cache, params=GlyphParams(max_classes=2, images_per_class=2)
    )
    assert len(list(cache.glob("glyphs-*.npz"))) == 2  # new params -> new key, old file kept
    assert not list(cache.glob("*.tmp"))  # temp files renamed away


def test_env_var_sets_default_cache_and_corrupt_cache_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERFLOW_CACHE", str(tmp_path))
    params = GlyphParams(max_classes=2, images_per_class=1)
    built = load_glyphs(image_size=16, params=params)
    [path] = tmp_path.glob("glyphs-*.npz")
    path.write_bytes(path.read_bytes()[:100])  # truncated file from a crashed writer
    rebuilt = load_glyphs(image_size=16, params=params)
    assert rebuilt.domains["greek"].images.tobytes() == built.domains["greek"].images.tobytes()


def test_domains_follow_the_documented_split(small):
    ds, _ = small
    assert ds.names("base") == ["latin", "greek", "cyrillic", "math"]
    heldout = ds.names("heldout")
    assert len(heldout) >= 4
    families = {ds.domains[n].family for n in heldout}
    assert families <= set(SHIFTS) and len(families) == len(heldout)
    for n in heldout:
        assert n.endswith("-" + ds.domains[n].family)
    assert all(ds.domains[n].family == "clean" for n in ds.names("base"))


def test_images_are_grey_glyphs_white_on_black(small):
    ds, _ = small
    for name in ds.names("base"):
        d = ds.domains[name]
        assert d.images.shape == (4 * 3, 1, 24, 24) and d.images.dtype == np.uint8
        border = np.concatenate([d.images[:, 0, 0], d.images[:, 0, -1]])
        assert border.mean() < 10, f"{name}: background not black"
        assert (d.images.max(axis=(1, 2, 3)) > 200).all(), f"{name}: an image without ink"
        means = [d.images[d.labels == c].mean(axis=0) for c in range(d.num_classes)]
        assert len({m.round().tobytes() for m in means}) == d.num_classes  # classes differ


def test_channels_three_replicates_grey(small):
    ds, cache = small
    rgb = load_glyphs(image_size=24, channels=3, cache_dir=cache, params=SMALL)
    d, e = ds.domains["hebrew-invert"], rgb.domains["hebrew-invert"]
    assert e.images.shape[1] == 3 and (e.images == d.images).all()


def test_every_class_has_at_least_two_real_fonts():
    paths = font_files()
    assert paths and not any(p.name.startswith(EXCLUDED_FONTS) for p in paths)
    cov = font_coverage(paths, {cp for spec in DOMAINS for cp in spec[3]})
    assert ord("A") in cov["DejaVuSans.ttf"] and 0x10D0 in cov["DejaVuSans.ttf"]
    assert 0x10D0 not in cov["cmr10.ttf"]
    # cmsy10 maps "!" to an arrow glyph: the glyph-name check must reject it, keep "A"
    cmsy = paths[0].parent / "cmsy10.ttf"
    assert font_coverage([cmsy], {ord("!"), ord("A")})["cmsy10.ttf"] == {ord("A")}


def test_glyphs_wide_adds_base_domains_and_keeps_every_glyphs_domain(small, tmp_path):
    ds, _ = small
    wide = load_glyphs(image_size=24, cache_dir=tmp_path, params=SMALL, wide=True)
    assert wide.spec == "glyphs" and wide.names("heldout") == ds.names("heldout")
    added = [n for n in wide.names("base") if n not in ds.domains]
    assert wide.names("base")[:4] == ds.names("base") and len(added) == len(WIDE_DOMAINS) >= 10
    for name, d in ds.domains.items():  # the same images: evaluation domains do not move
        assert wide.domains[name].images.tobytes() == d.images.tobytes(), name
    for name in added:
        assert wide.domains[name].family == "clean" and wide.domains[name].num_classes == 4, name


def test_glyphs_wide_base_shares_no_code_point_with_a_heldout_domain():
    heldout = {cp for spec in DOMAINS if spec[1] == "heldout" for cp in spec[3]}
    braille = set(range(0x2800, 0x2900))
    for name, split, family, cps, _ in WIDE_DOMAINS:
        assert split == "base" and family == "clean", name
        assert not set(cps) & (heldout | braille), name
        assert not set(cps) & set(range(0x2680, 0x268A)), f"{name}: dice-like dot patterns"
