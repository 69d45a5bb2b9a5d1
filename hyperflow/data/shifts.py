"""Image-statistics shifts: per-instance random corruptions of uint8 image batches.

Every family maps uint8 [N, C, H, W] -> uint8 [N, C, H, W] and draws its parameters per image
from the given numpy Generator, so the same (images, seed) always gives the same bytes. Sizes
(blur sigma, warp amplitude, stroke width) are fractions of the image side, so one ShiftParams
means the same visual strength at 32x32 and 84x84.

Polarity: images are assumed bright-object-on-dark (the glyphs convention). `clutter` puts
its strokes/texture *behind* the bright object (max-combine) and `thick` dilates bright strokes.

Families that trajectory collection may use are COLLECTION_SHIFTS: every family but the held-out
ones (hyperflow/heldout.py: `invert`, `clutter`, `elastic`), which are never used there, so
held-out results on those families measure generalisation honestly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hyperflow.data.procedural import PROCEDURAL_NAME as PROCEDURAL
from hyperflow.data.procedural import procedural
from hyperflow.errors import UserError
from hyperflow.heldout import HELD_OUT_SHIFTS

Range = tuple[float, float]


@dataclass(frozen=True)
class ShiftParams:
    """Strength of each family as (low, high) ranges sampled uniformly per image."""

    noise_std: Range = (0.12, 0.30)  # Gaussian pixel noise std, fraction of full scale
    blur_sigma: Range = (0.035, 0.065)  # Gaussian blur sigma, fraction of image side
    contrast_range: Range = (0.15, 0.40)  # output max - min after the shift, fraction of scale
    invert_range: Range = (0.6, 1.0)  # contrast left after inversion, fraction of scale
    clutter_strokes: tuple[int, int] = (3, 7)  # random strokes drawn behind the object
    clutter_level: Range = (0.35, 0.75)  # stroke / texture brightness, fraction of scale
    elastic_alpha: Range = (0.035, 0.07)  # RMS displacement, fraction of image side
    elastic_grid: int = 4  # random displacements on a grid x grid lattice, bilinearly spread
    thick_grow: Range = (0.04, 0.10)  # stroke width gain when dilating, fraction of side
    thin_prob: float = 0.2  # chance an image is eroded by one pixel instead of dilated
    tone_knots: int = 5  # random tone curve: levels at this many evenly spaced input values
    tone_span: Range = (0.5, 1.0)  # output max - min of the curve, fraction of scale


ShiftFn = Callable[..., np.ndarray]


def _to_float(images: np.ndarray) -> np.ndarray:
    assert images.dtype == np.uint8 and images.ndim == 4, (
        f"shifts take uint8 [N, C, H, W], got {images.dtype} {images.shape}"
    )
    return images.astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _per_image(rng: np.random.Generator, lo_hi: Range, n: int) -> np.ndarray:
    """One uniform draw per image, shaped [N, 1, 1, 1] to broadcast over C, H, W."""
    return rng.uniform(lo_hi[0], lo_hi[1], size=n).astype(np.float32).reshape(n, 1, 1, 1)


def noise(images: np.ndarray, rng: np.random.Generator, p: ShiftParams = ShiftParams()):
    x = _to_float(images)
    std = _per_image(rng, p.noise_std, len(x))
    return _to_uint8(x + std * rng.standard_normal(x.shape, dtype=np.float32))


def _blur_matrices(sigmas: np.ndarray, size: int) -> np.ndarray:
    """float [N, size, size]: row i of matrix n averages pixels around i with Gaussian sigma[n].

    Rows are renormalised at the borders, which is what blurring a nearest-padded image does
    to first order; x -> B x B^T then blurs every image with its own sigma in two matmuls.
    """
    d = np.arange(size)[:, None] - np.arange(size)[None, :]  # [size, size]
    k = np.exp(-(d[None] ** 2) / (2.0 * sigmas[:, None, None] ** 2))
    return (k / k.sum(axis=2, keepdims=True)).astype(np.float32)


def blur(images: np.ndarray, rng: np.random.Generator, p: ShiftParams = ShiftParams()):
    x = _to_float(images)
    n, _, h, w = x.shape
    sigmas = rng.uniform(*p.blur_sigma, size=n) * max(h, w)
    rows, cols = _blur_matrices(sigmas, h), _blur_matrices(sigmas, w)
    return _to_uint8(rows[:, None] @ x @ cols[:, None].transpose(0, 1, 3, 2))


def contrast(images: np.ndarray, rng: np.random.Generator, p: ShiftParams = ShiftParams()):
    x = _to_float(images)
    scale = _per_image(rng, p.contrast_range, len(x))
    offset = rng.uniform(0.0, 1.0, size=scale.shape).astype(np.float32) * (1.0 - scale)
    return _to_uint8(offset + scale * x)


def tone(images: np.ndarray, rng: np.random.Generator, p: ShiftParams = ShiftParams()):
    # A random piecewise-linear tone curve per image: random levels at evenly spaced input
    # values, stretched to a random span. Curves need not be monotone, so the background level
    # and the brightness order of strokes and background change too; a generic photometric
    # family (like colour jitter), not a copy of `invert`, which it almost never reproduces.
    x = _to_float(images)
    n, k = len(x), p.tone_knots
    levels = rng.uniform(0.0, 1.0, size=(n, k))  # [N, K]
    lo, hi = levels.min(axis=1, keepdims=True), levels.max(axis=1, keepdims=True)
    span = rng.uniform(*p.tone_span, size=(n, 1))
    base = rng.uniform(0.0, 1.0, size=(n, 1)) * (1.0 - span)
    levels = (base + span * (levels - lo) / np.maximum(hi - lo, 1e-6)).astype(np.float32)
    pos = x * (k - 1)  # [N, C, H, W] position on the knot grid
    i0 = np.minimum(pos.astype(np.int64), k - 2)  # left knot (pos >= 0)
    frac = pos - i0
    rows = np.arange(n).reshape(n, 1, 1, 1)
    return _to_uint8(levels[rows, i0] * (1 - frac) + levels[rows, i0 + 1] * frac)


def invert(images: np.ndarray, rng: np.random.Generator, p: ShiftParams = ShiftParams()):
    x = 1.0 - _to_float(images)
    scale = _per_image(rng, p.invert_range, len(x))
    offset = rng.uniform(0.0, 1.0, size=scale.shape).astype(np.float32) * (1.0 - scale)
    return _to_uint8(offset + scale * x)


def _strokes(rng: np.random.Generator, p: ShiftParams, n: int, h: int, w: int) -> np.ndarray:
    """Random straight strokes, float [N, H, W]; stroke count and brightness vary per image."""
    k_max = p.clutter_strokes[1]
    count = rng.integers(p.clutter_strokes[0], k_max + 1, size=n)
    level = rng.uniform(*p.clutter_level, size=(n, k_max)) * (np.arange(k_max) < count[:, None])
    ends = rng.uniform(-0.1, 1.1, size=(n, k_max, 2, 2)) * np.array([h - 1, w - 1])  # [N,K,2,yx]
    t = np.linspace(0.0, 1.0, 2 * max(h, w))[None, None, :, None]  # [1,1,L,1]
    pts = ends[:, :, :1] + t * (ends[:, :, 1:] - ends[:, :, :1])  # [N,K,L,yx]
    inside = (
        (pts[..., 0] >= 0) & (pts[..., 0] <= h - 1) & (pts[..., 1] >= 0) & (pts[..., 1] <= w - 1)
    )
    yx = np.rint(np.clip(pts, 0, [h - 1, w - 1])).astype(np.int64)
    flat = (np.arange(n)[:, None, None] * h + yx[..., 0]) * w + yx[..., 1]  # [N,K,L]
    vals = np.broadcast_to(level[:, :, None], flat.shape) * inside
    canvas = np.zeros(n * h * w, dtype=np.float32)
    np.maximum.at(canvas, flat.ravel(), vals.ravel().astype(np.float32))
    # widen the 1-px lines to roughly glyph stroke width (~6% of the side)
    width = max(2, int(round(0.06 * w)))
    return ndimage.grey_dilation(canvas.reshape(n, h, w), size=(1, width, width))


def _upsample(coarse: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of the last two axes of float [..., g, g] to [..., h, w]."""
    g = coarse.shape[-1]

    def weights(size: int) -> np.ndarray:  # [size, g]: linear interpolation between lattice nodes
        u = np.linspace(0.0, g - 1.0, size)
        return np.maximum(0.0, 1.0 - np.abs(u[:, None] - np.arange(g)[None, :])).astype(np.float32)

    return weights(h) @ coarse @ weights(w).T


def _texture(rng: np.random.Generator, p: ShiftParams, n: int, h: int, w: int) -> np.ndarray:
    """Smooth blotchy background, float [N, H, W] in [0, level]."""
    smooth = _upsample(rng.standard_normal((n, 6, 6)).astype(np.float32), h, w)
    level = rng.uniform(*p.clutter_level, size=(n, 1, 1)).astype(np.float32)
    return level * np.clip(0.5 + 0.5 * smooth, 0.0, 1.0)


def clutter(images: np.ndarray, rng: np.random.Generator, p: ShiftParams = ShiftParams()):
    x = _to_float(images)
    n, _, h, w = x.shape
    strokes, texture = _strokes(rng, p, n, h, w), _texture(rng, p, n, h, w)
    # per image: strokes only, texture only, or both
    mode = rng.integers(0, 3, size=(n, 1, 1))
    background = np.maximum(strokes * (mode != 1), texture * (mode != 0))
    return _to_uint8(np.maximum(x, background[:, None]))


def elastic(images: np.ndarray, rng: np.random.Generator, p: ShiftParams = ShiftParams()):
    n, c, h, w = images.shape
    # pixels as rows of a contiguous [N*H*W, C] table, so one np.take moves all channels
    table = np.ascontiguousarray(_to_float(images).transpose(0, 2, 3, 1)).reshape(-1, c)
    g = p.elastic_grid
    field = _upsample(rng.standard_normal((2, n, g, g)).astype(np.float32), h, w)  # [2,N,H,W]
    # unit RMS per image and axis, so alpha is the RMS displacement
    field /= np.sqrt((field**2).mean(axis=(2, 3), keepdims=True)) + 1e-8
    field *= rng.uniform(*p.elastic_alpha, size=(1, n, 1, 1)).astype(np.float32) * max(h, w)
    # bilinear sampling at the displaced positions, clamped to the border (nearest padding)
    yy = np.clip(np.arange(h, dtype=np.float32)[None, :, None] + field[0], 0, h - 1)
    xx = np.clip(np.arange(w, dtype=np.float32)[None, None, :] + field[1], 0, w - 1)
    y0, x0 = yy.astype(np.int64), xx.astype(np.int64)  # floor, as coordinates are >= 0
    wy, wx = (yy - y0).reshape(-1, 1), (xx - x0).reshape(-1, 1)  # [N*H*W, 1]
    row0 = (np.arange(n)[:, None, None] * h + y0) * w  # [N, H, W] flat index of (n, y0, 0)
    row1 = row0 + np.where(y0 < h - 1, w, 0)
    dx = np.where(x0 < w - 1, 1, 0).reshape(-1)
    i00, i10 = (row0 + x0).reshape(-1), (row1 + x0).reshape(-1)
    top = table.take(i00, axis=0) * (1 - wx) + table.take(i00 + dx, axis=0) * wx
    bottom = table.take(i10, axis=0) * (1 - wx) + table.take(i10 + dx, axis=0) * wx
    out = (top * (1 - wy) + bottom * wy).reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return _to_uint8(out)


def thick(images: np.ndarray, rng: np.random.Generator, p: ShiftParams = ShiftParams()):
    n, side = len(images), images.shape[-1]
    # a k x k max (min) filter widens (narrows) strokes by k-1 px; thinning is kept to one
    # pixel because thin strokes vanish under anything stronger
    thin = rng.uniform(size=n) < p.thin_prob
    grow = np.rint(rng.uniform(*p.thick_grow, size=n) * side).astype(np.int64)
    sizes = np.where(thin, 2, np.maximum(grow, 1) + 1)
    out = np.empty_like(images)
    for k in np.unique(sizes):
        for erode in (False, True):
            idx = np.flatnonzero((sizes == k) & (thin == erode))
            if len(idx):
                op = ndimage.grey_erosion if erode else ndimage.grey_dilation
                out[idx] = op(images[idx], size=(1, 1, int(k), int(k)))
    return out


SHIFTS: dict[str, ShiftFn] = {
    "noise": noise,
    "blur": blur,
    "contrast": contrast,
    "invert": invert,
    "clutter": clutter,
    "elastic": elastic,
    "thick": thick,
    "tone": tone,
    # a composition of primitives per episode (procedural.py); episode specs record it
    PROCEDURAL: procedural,
}

# families trajectory collection may draw from: derived, so a new family is collectable unless
# it is added to HELD_OUT_SHIFTS; the held-out ones stay unseen until evaluation
COLLECTION_SHIFTS: tuple[str, ...] = tuple(n for n in SHIFTS if n not in HELD_OUT_SHIFTS)


def apply_shift(
    name: str,
    images: np.ndarray,
    seed: int | Sequence[int],
    params: ShiftParams | None = None,
) -> np.ndarray:
    """Apply shift family `name` to uint8 [N, C, H, W] with per-image parameters drawn from seed."""
    if name not in SHIFTS:
        raise UserError(f"unknown image shift {name!r}; valid: {', '.join(SHIFTS)}")
    rng = np.random.default_rng(seed)
    return SHIFTS[name](images, rng, params or ShiftParams())
