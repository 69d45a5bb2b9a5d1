"""`glyphs`: the embedded default benchmark, rendered from the fonts that ship with matplotlib.

Class = one Unicode code point; domain = one script / block. An image is the code point drawn in
a randomly chosen font that really contains it (>= 2 such fonts per class, see fonts.py) with
per-instance jitter (size, rotation, translation, stroke width), white glyph on black, grey.

Fixed split (do not change without bumping BUILDER_VERSION and telling everyone):

  base (clean; pretraining and trajectory collection)
    latin       ASCII + Latin-1 letters            greek     Greek and Coptic block letters
    cyrillic    Cyrillic block letters             math      arrows + mathematical operators
  heldout (unseen script x image-statistics shift, shift applied per instance)
    georgian-noise    armenian-blur    arabic-contrast    hebrew-invert
    braille-clutter   tifinagh-elastic canadian-thick (Unified Canadian Aboriginal Syllabics)

`glyphs-wide` (load_glyphs(wide=True)) adds 15 base domains from what the same fonts carry:
the Latin, Greek and Cyrillic extensions, IPA, mathematical alphanumerics, letterlike symbols,
technical symbols, miscellaneous symbols, dingbats, supplemental arrows and mathematical operators,
and four scripts the project uses nowhere else (Lao, N'Ko, Ogham, Old Italic). They are appended to
the table, so the 11 domains above are bit-identical in both datasets; no held-out script joins
base, and no dot patterns (dice faces and the like are left out: braille is held out).

Braille uses only the 64 patterns that contain dots 1 and 8, so every pattern spans the full
cell and centring cannot merge two patterns. Within a domain, classes whose reference
renderings are near-identical (cosine >= GlyphParams.dedupe, e.g. Latin l vs I) are dropped.
Blocks larger than max_classes are subsampled deterministically.

The build is deterministic (numpy Generators seeded from (seed, domain, code point)) and cached
as one .npz keyed by image_size, GlyphParams, the domain table, BUILDER_VERSION, the font files
and the Pillow/FreeType versions.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import PIL
from PIL import features

from hyperflow.data.cache import cache_key, cache_root, load_arrays, save_arrays
from hyperflow.data.dataset import Dataset, Domain
from hyperflow.data.fonts import (
    NO_JITTER,
    Jitter,
    font_coverage,
    font_files,
    ink_extent,
    load_font,
    render_glyph,
)
from hyperflow.data.shifts import SHIFTS, ShiftParams

BUILDER_VERSION = 1
Range = tuple[float, float]


def _span(*ranges: tuple[int, int]) -> tuple[int, ...]:
    return tuple(cp for lo, hi in ranges for cp in range(lo, hi + 1))


_BRAILLE_FULL_CELL = tuple(0x2800 | 0x01 | 0x80 | (bits << 1) for bits in range(64))

# (name, split, family, candidate code points, allowed Unicode category initials)
DOMAINS: tuple[tuple[str, str, str, tuple[int, ...], str], ...] = (
    ("latin", "base", "clean", _span((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xFF)), "L"),
    ("greek", "base", "clean", _span((0x370, 0x3FF)), "L"),
    ("cyrillic", "base", "clean", _span((0x400, 0x4FF)), "L"),
    ("math", "base", "clean", _span((0x2190, 0x21FF), (0x2200, 0x22FF)), "S"),
    ("georgian-noise", "heldout", "noise", _span((0x10A0, 0x10FF)), "L"),
    ("armenian-blur", "heldout", "blur", _span((0x531, 0x587)), "L"),
    ("arabic-contrast", "heldout", "contrast", _span((0x621, 0x64A)), "L"),
    ("hebrew-invert", "heldout", "invert", _span((0x5D0, 0x5EA)), "L"),
    ("braille-clutter", "heldout", "clutter", _BRAILLE_FULL_CELL, "S"),
    ("tifinagh-elastic", "heldout", "elastic", _span((0x2D30, 0x2D7F)), "L"),
    ("canadian-thick", "heldout", "thick", _span((0x1400, 0x167F)), "L"),
)
_DICE_AND_DOTS = set(range(0x2680, 0x268A))  # die faces, circles with dots: braille-like
# glyphs-wide's extra base domains (clean), after DOMAINS so their seeds [seed, index] differ
WIDE_DOMAINS: tuple[tuple[str, str, str, tuple[int, ...], str], ...] = (
    ("latin-ext", "base", "clean", _span((0x100, 0x24F), (0x1E00, 0x1EFF)), "L"),
    ("greek-ext", "base", "clean", _span((0x1F00, 0x1FFF)), "L"),
    ("cyrillic-ext", "base", "clean", _span((0x500, 0x52F), (0xA640, 0xA69F)), "L"),
    ("ipa", "base", "clean", _span((0x250, 0x2AF), (0x1D00, 0x1D7F)), "L"),
    ("math-alnum", "base", "clean", _span((0x1D400, 0x1D7FF)), "LN"),
    ("letterlike", "base", "clean", _span((0x2100, 0x214F), (0x20A0, 0x20CF)), "LS"),
    ("technical", "base", "clean", _span((0x2300, 0x23FF)), "S"),
    (
        "symbols",
        "base",
        "clean",
        tuple(cp for cp in _span((0x2600, 0x26FF)) if cp not in _DICE_AND_DOTS),
        "S",
    ),
    ("dingbats", "base", "clean", _span((0x2700, 0x27BF)), "SN"),
    (
        "arrows-ext",
        "base",
        "clean",
        _span((0x27F0, 0x27FF), (0x2900, 0x297F), (0x2B00, 0x2BFF)),
        "S",
    ),
    ("math-ext", "base", "clean", _span((0x2980, 0x29FF), (0x2A00, 0x2AFF)), "S"),
    ("lao", "base", "clean", _span((0xE80, 0xEFF)), "LN"),
    ("nko", "base", "clean", _span((0x7C0, 0x7FF)), "LN"),
    ("ogham", "base", "clean", _span((0x1680, 0x169F)), "L"),
    ("old-italic", "base", "clean", _span((0x10300, 0x1032F)), "LN"),
)


def domain_table(wide: bool = False) -> tuple[tuple[str, str, str, tuple[int, ...], str], ...]:
    """The domains a build draws: DOMAINS, and for glyphs-wide WIDE_DOMAINS after them."""
    return DOMAINS + WIDE_DOMAINS if wide else DOMAINS


@dataclass(frozen=True)
class GlyphParams:
    """Everything that shapes the glyphs build; all of it is part of the cache key."""

    images_per_class: int = 20
    max_classes: int = 150  # per domain; larger blocks are subsampled
    seed: int = 0
    min_fonts: int = 2  # a class needs this many fonts that contain it
    supersample: int = 4  # draw at this multiple of image_size, then downsample
    em_frac: float = 0.85  # em size as a fraction of the image side
    scale: Range = (0.85, 1.1)  # per-instance multiplier of the em size
    angle: float = 12.0  # max |rotation| in degrees
    translate: float = 0.08  # max |translation|, fraction of the image side
    stroke: Range = (-0.5, 1.0)  # stroke width change in output pixels
    min_extent: float = 0.25  # drop glyphs whose ink box is smaller than this fraction of the em
    dedupe: float = 0.95  # drop a class this similar (cosine) to an earlier one in its domain
    shifts: ShiftParams = field(default_factory=ShiftParams)


def _jitter(rng: np.random.Generator, p: GlyphParams) -> Jitter:
    u = rng.uniform(size=5)  # one call: per-call overhead dominates for 20k instances
    lerp = lambda lo, hi, t: float(lo + (hi - lo) * t)  # noqa: E731
    return Jitter(
        scale=lerp(*p.scale, u[0]),
        angle=lerp(-p.angle, p.angle, u[1]),
        dx=lerp(-p.translate, p.translate, u[2]),
        dy=lerp(-p.translate, p.translate, u[3]),
        stroke=lerp(*p.stroke, u[4]),
    )


def _select_classes(spec, fonts, probes, coverage, size, p, rng) -> list[tuple[int, list[str]]]:
    """[(code point, names of fonts that draw it)] kept for one domain, in code point order.

    probes are the same fonts at 1x resolution: enough to measure the ink box, 16x cheaper.
    """
    _, _, _, codepoints, categories = spec
    kept, refs = [], np.zeros((0, size * size), dtype=np.float32)
    for cp in codepoints:
        if unicodedata.category(chr(cp))[0] not in categories:
            continue
        names = [n for n in fonts if cp in coverage[n]]
        names = [n for n in names if ink_extent(probes[n], chr(cp)) >= p.min_extent]
        if len(names) < p.min_fonts:
            continue
        ref = render_glyph(fonts[names[0]], chr(cp), size, p.supersample, NO_JITTER)
        ref = ref.astype(np.float32).reshape(1, -1)
        ref /= np.linalg.norm(ref) + 1e-8
        if len(refs) and float((refs @ ref.T).max()) >= p.dedupe:
            continue
        kept.append((cp, names))
        refs = np.concatenate([refs, ref])
    if len(kept) > p.max_classes:
        pick = np.sort(rng.choice(len(kept), p.max_classes, replace=False))
        kept = [kept[i] for i in pick]
    return kept


def _build(size: int, p: GlyphParams, table) -> tuple[dict[str, np.ndarray], dict]:
    paths = font_files()
    coverage = font_coverage(paths, {cp for spec in table for cp in spec[3]})
    fonts = {path.name: load_font(path, size, p.supersample, p.em_frac) for path in paths}
    probes = {path.name: load_font(path, size, 1, p.em_frac) for path in paths}
    arrays, domains = {}, []
    for d, spec in enumerate(table):
        name, split, family = spec[:3]
        rng = np.random.default_rng([p.seed, d])
        kept = _select_classes(spec, fonts, probes, coverage, size, p, rng)
        images = np.zeros((len(kept) * p.images_per_class, 1, size, size), dtype=np.uint8)
        for c, (cp, names) in enumerate(kept):
            rng = np.random.default_rng([p.seed, d, cp])
            for i in range(p.images_per_class):
                font = fonts[names[rng.integers(len(names))]]
                jitter = _jitter(rng, p)
                images[c * p.images_per_class + i, 0] = render_glyph(
                    font, chr(cp), size, p.supersample, jitter
                )
        if family != "clean":
            # 0x110000 is past the last code point, so this stream never equals a class stream
            shift_rng = np.random.default_rng([p.seed, d, 0x110000])
            images = SHIFTS[family](images, shift_rng, p.shifts)
        arrays[f"images_{d}"] = images
        arrays[f"labels_{d}"] = np.repeat(np.arange(len(kept), dtype=np.int64), p.images_per_class)
        names = [f"U+{cp:04X}" for cp, _ in kept]
        domains.append({"name": name, "split": split, "family": family, "classes": names})
    return arrays, {"domains": domains}


def _inputs(size: int, p: GlyphParams, table) -> dict:
    fonts = [[path.name, path.stat().st_size] for path in font_files()]
    return {
        "builder": "glyphs",
        "version": BUILDER_VERSION,
        "image_size": size,
        "params": asdict(p),
        "domains": [list(spec) for spec in table],  # so an edited table can never hit old files
        "fonts": fonts,
        "pillow": PIL.__version__,
        "freetype": features.version("freetype2"),
    }


def load_glyphs(
    image_size: int = 32,
    channels: int = 1,
    cache_dir: str | Path | None = None,
    params: GlyphParams | None = None,
    spec: str = "glyphs",
    wide: bool = False,
) -> Dataset:
    """The glyphs dataset (glyphs-wide: `wide`), built on first use, then loaded from a cache."""
    assert channels in (1, 3), f"channels must be 1 or 3, got {channels}"
    p = params or GlyphParams()
    table = domain_table(wide)
    key = cache_key(_inputs(image_size, p, table))
    path = cache_root(cache_dir) / f"glyphs-{key}.npz"
    cached = load_arrays(path)
    if cached is None or cached[1].get("key") != key:
        t0 = time.perf_counter()
        arrays, meta = _build(image_size, p, table)
        meta.update(key=key, build_seconds=round(time.perf_counter() - t0, 2))
        save_arrays(path, arrays, meta)
        cached = arrays, meta
    arrays, meta = cached
    domains = {}
    # base domains first (glyphs-wide's come after the held-out ones in the table)
    order = sorted(range(len(meta["domains"])), key=lambda d: meta["domains"][d]["split"] != "base")
    for d in order:
        info = meta["domains"][d]
        images = arrays[f"images_{d}"]
        domains[info["name"]] = Domain(
            name=info["name"],
            split=info["split"],
            family=info["family"],
            images=np.repeat(images, channels, axis=1) if channels > 1 else images,
            labels=arrays[f"labels_{d}"],
            class_names=list(info["classes"]),
        )
    return Dataset(spec=spec, domains=domains)
