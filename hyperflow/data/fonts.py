"""The TrueType fonts inside matplotlib: which really contain a code point, and drawing one glyph.

A font "contains" a code point only if its cmap maps it to a glyph whose PostScript name means
that same character (Adobe Glyph List, NFC-normalised). This rejects the TeX-encoded Computer
Modern fonts' reuse of ASCII slots for other symbols (cmsy10 maps "!" to an arrow) and can never
fall back to a .notdef box. Excluded on purpose: LastResort (a box per Unicode block), the STIX
size variants and DejaVu Display faces (stretched display forms, not alternative designs), and
cmsy10/cmex10 (their only Unicode-consistent slots are calligraphic capitals and one delimiter).

Glyphs are drawn white on black at `supersample` x the target resolution (widened by FreeType
stroking or thinned by a min filter), rotated, cropped to their ink, resized and pasted. The em
size, not the ink box, sets the scale, so case and relative size (o vs O) survive.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from fontTools import agl
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont

EXCLUDED_FONTS = (
    "LastResort",
    "STIXSiz",
    "DejaVuSansDisplay",
    "DejaVuSerifDisplay",
    "cmsy10",
    "cmex10",
)


def font_files() -> list[Path]:
    """Usable .ttf files shipped with matplotlib, sorted by file name."""
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = sorted(font_dir.glob("*.ttf"), key=lambda p: p.name)
    return [p for p in paths if not p.name.startswith(EXCLUDED_FONTS)]


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def font_coverage(paths: list[Path], codepoints: set[int]) -> dict[str, frozenset[int]]:
    """Font file name -> those of codepoints whose glyph name agrees with the code point."""
    coverage = {}
    for path in paths:
        cmap = TTFont(path, lazy=True).getBestCmap()
        coverage[path.name] = frozenset(
            cp for cp in codepoints & cmap.keys() if _nfc(agl.toUnicode(cmap[cp])) == _nfc(chr(cp))
        )
    return coverage


@dataclass(frozen=True)
class Jitter:
    """Per-instance rendering variation."""

    scale: float  # multiplies the em size
    angle: float  # rotation in degrees, counter-clockwise
    dx: float  # translation, fraction of the image side
    dy: float
    stroke: float  # stroke width change in output pixels (<0 thins)


NO_JITTER = Jitter(scale=1.0, angle=0.0, dx=0.0, dy=0.0, stroke=0.0)


def load_font(path: Path, size: int, supersample: int, em_frac: float) -> ImageFont.FreeTypeFont:
    """A font at the high-resolution em size used by render_glyph for output side `size`."""
    # BASIC layout: no shaping engine, so the bytes do not depend on whether libraqm exists
    em = int(round(em_frac * size * supersample))
    return ImageFont.truetype(str(path), em, layout_engine=ImageFont.Layout.BASIC)


def _draw(font: ImageFont.FreeTypeFont, char: str, stroke: int = 0) -> Image.Image:
    """The glyph drawn white on black (mode L), cropped to its ink; stroke widens the outline."""
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    pad = 2 + stroke
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (pad - left, pad - top), char, font=font, fill=255, stroke_width=stroke, stroke_fill=255
    )
    box = canvas.getbbox()
    assert box is not None, f"glyph U+{ord(char):04X} has no ink in {font.path}"
    return canvas.crop(box)


def ink_extent(font: ImageFont.FreeTypeFont, char: str) -> float:
    """Largest side of the glyph's ink box as a fraction of the em (0 if nothing is drawn)."""
    box = font.getmask(char, mode="L").getbbox()  # rasterises without a canvas: ~4x faster
    return 0.0 if box is None else max(box[2] - box[0], box[3] - box[1]) / font.size


def render_glyph(
    font: ImageFont.FreeTypeFont, char: str, size: int, supersample: int, jitter: Jitter
) -> np.ndarray:
    """char drawn with `font` (from load_font), jittered and centred: uint8 [size, size]."""
    # FreeType strokes the outline to widen (cheap); a min filter thins (needs a raster)
    width = int(round(abs(jitter.stroke) * supersample / 2))  # px added on each side
    img = _draw(font, char, stroke=width if jitter.stroke > 0 else 0)
    if jitter.stroke < 0 and width:
        img = img.filter(ImageFilter.MinFilter(2 * width + 1))
    if jitter.angle:
        img = img.rotate(jitter.angle, resample=Image.Resampling.BILINEAR, expand=True)
    box = img.getbbox()
    img = _draw(font, char) if box is None else img.crop(box)  # None: thinning erased it all
    # the em sets the scale; only glyphs too large for the frame are shrunk to fit 94% of it
    factor = jitter.scale / supersample
    factor = min(factor, 0.94 * size / max(img.size))
    w, h = (max(1, int(round(s * factor))) for s in img.size)
    small = np.asarray(img.resize((w, h), Image.Resampling.LANCZOS))
    out = np.zeros((size, size), dtype=np.uint8)
    x0 = min(max(round((size - w) / 2 + jitter.dx * size), 0), size - w)
    y0 = min(max(round((size - h) / 2 + jitter.dy * size), 0), size - h)
    out[y0 : y0 + h, x0 : x0 + w] = small
    return out
