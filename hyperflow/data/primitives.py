"""The primitives the procedural task space composes (hyperflow/data/procedural.py).

Each primitive has a `draw(rng) -> params` (the episode's parameters, plain JSON numbers) and an
`apply(x, params, rng) -> x` on float [N, C, H, W] in [0, 1] that jitters the continuous
parameters per image around the episode's (JITTER of their range) before applying them. Sizes are
fractions of the image side, as in shifts.py.

The benchmark's rule holds by construction: no primitive flips polarity (every tone map is
non-decreasing, every kernel sums to 1 and keeps a positive centre), none draws anything behind the
glyph (spatial ops only move, spread or remove ink and fill with the background level; noise is
image-wide and independent of the glyph) and none displaces pixels locally (the only geometric op
is one affine map per image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

JITTER = 0.1  # per-image std of a parameter around the episode's, as a share of its range
Params = dict[str, float | list[float]]


@dataclass(frozen=True)
class PrimitiveDef:
    draw: Callable[[np.random.Generator], Params]
    apply: Callable[[np.ndarray, Params, np.random.Generator], np.ndarray]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _jit(rng, value: float, lo: float, hi: float, n: int, log: bool = False) -> np.ndarray:
    """float32 [N, 1, 1, 1]: `value` jittered per image, kept in [lo, hi] (log scale: in logs)."""
    f = np.log if log else (lambda v: v)
    v = f(value) + JITTER * (f(hi) - f(lo)) * rng.standard_normal(n)
    v = np.clip(v, f(lo), f(hi))
    return (np.exp(v) if log else v).astype(np.float32).reshape(n, 1, 1, 1)


def _background(x: np.ndarray) -> np.ndarray:
    """[N, 1, 1, 1]: each image's background level, the median of its border pixels."""
    border = np.concatenate([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], axis=-1)
    return np.median(border.reshape(len(x), -1), axis=1).reshape(-1, 1, 1, 1)


def _per_image(x: np.ndarray, fn: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    # fn(image [C, H, W], index) -> image; for ops whose parameters differ per image
    return np.stack([fn(img, i) for i, img in enumerate(x)])


# -- spatial filters: kernels sum to 1, so a flat background stays what it was ---------------------


def _conv_draw(rng):
    return {"weights": rng.dirichlet(np.ones(9)).round(4).tolist(), "sharpen": _u(rng, 0, 0.6)}


def _conv(x, p, rng):
    w = np.asarray(p["weights"], np.float32).reshape(1, 1, 3, 3)
    w = w / w.sum()
    sharp = -np.full((1, 1, 3, 3), 1 / 9, np.float32)
    sharp[0, 0, 1, 1] += 2.0  # 2 delta - box: sums to 1, positive centre
    s = _jit(rng, p["sharpen"], 0.0, 0.6, len(x))
    smooth = ndimage.convolve(x, w, mode="nearest")
    # per-image kernel (1 - s) w + s (2 delta - box), by linearity
    return smooth + s * (ndimage.convolve(x, sharp, mode="nearest") - smooth)


def _gauss_blur(x, p, rng):
    sig = _jit(rng, p["sigma"], 0.015, 0.05, len(x)).ravel() * x.shape[-1]
    return _per_image(
        x, lambda im, i: ndimage.gaussian_filter(im, (0, sig[i], sig[i]), mode="nearest")
    )


def _box_blur(x, p, rng):
    size = np.maximum(2, np.rint(_jit(rng, p["size"], 0.05, 0.12, len(x)).ravel() * x.shape[-1]))
    return _per_image(
        x, lambda im, i: ndimage.uniform_filter(im, (1, int(size[i]), int(size[i])), mode="nearest")
    )


def _motion_blur(x, p, rng):
    n, side = len(x), x.shape[-1]
    length = _jit(rng, p["length"], 0.06, 0.2, n).ravel() * side
    angle = _jit(rng, p["angle"], 0.0, np.pi, n).ravel()

    def one(im, i):
        r = max(1, int(np.ceil(length[i] / 2)))
        t = np.linspace(-length[i] / 2, length[i] / 2, 4 * r + 1)
        k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)  # a centred line: no net shift
        np.add.at(
            k,
            (
                np.rint(r + t * np.sin(angle[i])).astype(int),
                np.rint(r + t * np.cos(angle[i])).astype(int),
            ),
            1.0,
        )
        return ndimage.convolve(im, (k / k.sum())[None], mode="nearest")

    return _per_image(x, one)


def _morph_draw(rng):
    element = (rng.random(9) < 0.5).astype(int)
    element[4] = 1  # the centre: a pixel always sees itself
    return {
        "element": element.tolist(),
        "erode": float(rng.random() < 0.3),
        "strength": _u(rng, 0.6, 1.0),
    }


def _morph(x, p, rng):
    foot = np.asarray(p["element"], bool).reshape(1, 1, 3, 3)
    op = ndimage.grey_erosion if p["erode"] else ndimage.grey_dilation
    a = _jit(rng, p["strength"], 0.6, 1.0, len(x))
    return x + a * (op(x, footprint=foot) - x)


# -- geometry: one affine map per image, the background level outside -----------------------------

# radians, shear factor, log aspect, log scale, shift as a fraction of the side
_AFFINE_RANGES = {"rotate": (-0.35, 0.35), "shear": (-0.3, 0.3), "aspect": (-0.25, 0.25),
                  "scale": (-0.15, 0.15), "dy": (-0.08, 0.08), "dx": (-0.08, 0.08)}  # fmt: skip


def _affine_draw(rng):
    return {k: _u(rng, lo, hi) for k, (lo, hi) in _AFFINE_RANGES.items()}


def _affine(x, p, rng):
    n, side = len(x), x.shape[-1]
    j = {k: _jit(rng, p[k], *r, n).ravel() for k, r in _AFFINE_RANGES.items()}
    bg = _background(x).ravel()
    c = (side - 1) / 2.0

    def one(im, i):
        rot, sh = j["rotate"][i], j["shear"][i]
        sy, sx = np.exp(j["scale"][i] + j["aspect"][i]), np.exp(j["scale"][i] - j["aspect"][i])
        fwd = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]]) @ np.array(
            [[sy, sh], [0.0, sx]]
        )
        inv = np.linalg.inv(fwd)  # affine_transform maps output coordinates to input ones
        shift = np.array([j["dy"][i], j["dx"][i]]) * side
        off = np.array([c, c]) - inv @ (np.array([c, c]) + shift)
        return np.stack(
            [ndimage.affine_transform(ch, inv, off, order=1, cval=float(bg[i])) for ch in im]
        )

    return _per_image(x, one)


# -- resolution: block means and down/up-sampling ------------------------------------------------


def _block(x, p, rng):
    size = np.maximum(2, np.rint(_jit(rng, p["size"], 0.06, 0.15, len(x)).ravel() * x.shape[-1]))
    c, h, w = x.shape[1:]

    def one(im, i):  # every b x b tile (from the top-left corner) takes its mean
        b = int(size[i])
        ph, pw = -h % b, -w % b
        tiles = np.pad(im, ((0, 0), (0, ph), (0, pw)), mode="edge")
        means = tiles.reshape(c, (h + ph) // b, b, (w + pw) // b, b).mean(axis=(2, 4))
        return np.repeat(np.repeat(means, b, axis=1), b, axis=2)[:, :h, :w]

    return _per_image(x, one)


def _resample(x, p, rng):
    f = _jit(rng, p["factor"], 0.35, 0.7, len(x)).ravel()
    h, w = x.shape[-2:]

    def one(im, i):
        small = ndimage.zoom(im, (1, f[i], f[i]), order=1, mode="nearest")
        return ndimage.zoom(
            small, (1, h / small.shape[1], w / small.shape[2]), order=1, mode="nearest"
        )[:, :h, :w]

    return _per_image(x, one)


def _cutout(x, p, rng):
    n, (h, w) = len(x), x.shape[-2:]
    size = _jit(rng, p["size"], 0.15, 0.3, n).ravel()
    out, bg = x.copy(), _background(x).ravel()
    for i in range(n):
        for _ in range(int(p["holes"])):  # where: per image; filled with the background level
            sh, sw = max(1, int(size[i] * h)), max(1, int(size[i] * w))
            y0, x0 = rng.integers(0, h - sh + 1), rng.integers(0, w - sw + 1)
            out[i, :, y0 : y0 + sh, x0 : x0 + sw] = bg[i]
    return out


# -- photometric: non-decreasing tone maps, ink-only lighting --------------------------------------


def _gamma(x, p, rng):
    return x ** _jit(rng, p["gamma"], 0.4, 2.5, len(x), log=True)


def _tone_draw(rng):
    return {
        "steps": rng.dirichlet(np.ones(4)).round(4).tolist(),
        "low": _u(rng, 0, 0.3),
        "high": _u(rng, 0.7, 1.0),
    }


def _tone(x, p, rng):
    n = len(x)
    knots = np.concatenate([[0.0], np.cumsum(p["steps"]) / np.sum(p["steps"])]).astype(np.float32)
    low, high = _jit(rng, p["low"], 0, 0.3, n), _jit(rng, p["high"], 0.7, 1.0, n)
    pos = x * (len(knots) - 1)  # a non-decreasing piecewise-linear curve through the knots
    i0 = np.minimum(pos.astype(np.int64), len(knots) - 2)
    curve = knots[i0] + (pos - i0) * (knots[i0 + 1] - knots[i0])
    return low + (high - low) * curve


def _contrast(x, p, rng):
    n = len(x)
    scale = _jit(rng, p["scale"], 0.3, 1.0, n)
    return _jit(rng, p["offset"], 0.0, 1.0, n) * (1 - scale) + scale * x


def _posterise(x, p, rng):
    levels = int(p["levels"]) - 1
    shift = _jit(rng, p["shift"], -0.2, 0.2, len(x))
    return np.clip(np.floor(x * levels + 0.5 + shift), 0, levels) / levels


def _lighting(x, p, rng):
    n, (h, w) = len(x), x.shape[-2:]
    depth = _jit(rng, p["depth"], 0.2, 0.7, n)
    angle = _jit(rng, p["angle"], 0.0, 2 * np.pi, n)
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, h), np.linspace(-0.5, 0.5, w), indexing="ij")
    ramp = 0.5 + np.sin(angle) * yy + np.cos(angle) * xx  # [N, 1, H, W], ~[0, 1]
    bg = _background(x)
    # only what stands above the background is lit: the background itself stays
    return bg + np.maximum(x - bg, 0) * (1 - depth * np.clip(ramp, 0, 1)) + np.minimum(x - bg, 0)


# -- noise: image-wide and independent of the glyph ------------------------------------------------


def _gauss_noise(x, p, rng):
    return x + _jit(rng, p["std"], 0.03, 0.2, len(x)) * rng.standard_normal(x.shape, np.float32)


def _salt_pepper(x, p, rng):
    frac = _jit(rng, p["fraction"], 0.01, 0.08, len(x))
    u = rng.random(x.shape, np.float32)
    return np.where(u < frac / 2, 0.0, np.where(u > 1 - frac / 2, 1.0, x))


def _speckle(x, p, rng):
    return x * (
        1 + _jit(rng, p["std"], 0.1, 0.5, len(x)) * rng.standard_normal(x.shape, np.float32)
    )


def _shot(x, p, rng):
    peak = _jit(rng, p["peak"], 5.0, 60.0, len(x), log=True)
    return rng.poisson(np.maximum(x, 0) * peak).astype(np.float32) / peak


def _ranged(**ranges: tuple[float, float]) -> Callable[[np.random.Generator], Params]:
    return lambda rng: {k: _u(rng, lo, hi) for k, (lo, hi) in ranges.items()}


def _log_ranged(key: str, lo: float, hi: float) -> Callable[[np.random.Generator], Params]:
    return lambda rng: {key: float(np.exp(rng.uniform(np.log(lo), np.log(hi))))}


PRIMITIVES: dict[str, PrimitiveDef] = {
    "conv": PrimitiveDef(_conv_draw, _conv),
    "gaussian_blur": PrimitiveDef(_ranged(sigma=(0.015, 0.05)), _gauss_blur),
    "box_blur": PrimitiveDef(_ranged(size=(0.05, 0.12)), _box_blur),
    "motion_blur": PrimitiveDef(_ranged(length=(0.06, 0.2), angle=(0, np.pi)), _motion_blur),
    "morphology": PrimitiveDef(_morph_draw, _morph),
    "affine": PrimitiveDef(_affine_draw, _affine),
    "block": PrimitiveDef(_ranged(size=(0.06, 0.15)), _block),
    "resample": PrimitiveDef(_ranged(factor=(0.35, 0.7)), _resample),
    "cutout": PrimitiveDef(
        lambda rng: {"holes": float(rng.integers(1, 3)), "size": _u(rng, 0.15, 0.3)}, _cutout
    ),
    "gamma": PrimitiveDef(_log_ranged("gamma", 0.4, 2.5), _gamma),
    "tone": PrimitiveDef(_tone_draw, _tone),
    "contrast": PrimitiveDef(_ranged(scale=(0.3, 1.0), offset=(0, 1)), _contrast),
    "posterise": PrimitiveDef(
        lambda rng: {"levels": float(rng.integers(2, 7)), "shift": _u(rng, -0.15, 0.15)}, _posterise
    ),
    "lighting": PrimitiveDef(_ranged(depth=(0.2, 0.7), angle=(0, 2 * np.pi)), _lighting),
    "gaussian_noise": PrimitiveDef(_ranged(std=(0.03, 0.2)), _gauss_noise),
    "salt_pepper": PrimitiveDef(_ranged(fraction=(0.01, 0.08)), _salt_pepper),
    "speckle": PrimitiveDef(_ranged(std=(0.1, 0.5)), _speckle),
    "shot_noise": PrimitiveDef(_log_ranged("peak", 5.0, 60.0), _shot),
}

# image-wide noise: the only primitives that change a flat background's pixels unevenly
NOISE = frozenset({"gaussian_noise", "salt_pepper", "speckle", "shot_noise"})
