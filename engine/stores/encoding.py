"""Lossless theta encodings shared by every store format.

A trajectory moves each bias a little per step, and Adam's momentum makes consecutive steps
alike. Differencing the float *bit patterns* (as unsigned ints, wrapping) along time turns the
slowly varying high bytes into near-zero runs that a byte-shuffling compressor squeezes well,
and is exactly invertible in the stored dtype (unlike float subtraction). Measured on
synthetic Adam trajectories (T=20, P=5000, float16, blosc-zstd5+shuffle, bytes relative to
float16): raw 0.87, delta 0.70, delta2 0.63, 3rd order 0.69. Hence delta2 is the default.

Decoding needs only numpy, so plain zarr/tar users can do it too (see `decode_recipe`).
"""

import numpy as np

# name -> order of the finite difference along the time axis (-2)
THETA_ENCODINGS = {"raw": 0, "delta": 1, "delta2": 2}
DEFAULT_ENCODING = "delta2"
_UINT = {"float16": np.uint16, "float32": np.uint32}


def _order(encoding: str) -> int:
    # the name comes from a caller or from a stored shard's header: not an invariant
    if encoding not in THETA_ENCODINGS:
        raise ValueError(f"unknown theta encoding {encoding!r}; known: {sorted(THETA_ENCODINGS)}")
    return THETA_ENCODINGS[encoding]


def encode_theta(theta: np.ndarray, encoding: str) -> np.ndarray:
    """theta float [..., T+1, P] -> stored array (the float itself for raw, else uint bits)."""
    k = _order(encoding)
    if k == 0:
        return np.ascontiguousarray(theta)
    x = theta.view(_UINT[theta.dtype.name]).copy()
    for _ in range(k):
        for t in range(x.shape[-2] - 1, 0, -1):  # in place, last row first
            x[..., t, :] -= x[..., t - 1, :]  # wraps modulo 2**bits, so exact
    return x


def decode_theta(stored: np.ndarray, encoding: str, dtype: str) -> np.ndarray:
    """Inverse of encode_theta: stored [..., T+1, P] -> theta of `dtype` [..., T+1, P]."""
    k = _order(encoding)
    if k == 0:
        if stored.dtype.name != dtype:
            raise ValueError(f"raw theta stored as {stored.dtype}, expected {dtype}")
        return stored
    u = _UINT[dtype]
    if stored.dtype != u:
        raise ValueError(f"{encoding} theta must be stored as {np.dtype(u).name}")
    x = stored.copy()
    for _ in range(k):  # == np.cumsum(x, axis=-2, dtype=u), but row adds are ~15x faster
        for t in range(1, x.shape[-2]):
            x[..., t, :] += x[..., t - 1, :]
    return x.view(dtype)


def decode_recipe(encoding: str, dtype: str) -> str:
    """One line telling a plain numpy user how to get theta back from the stored array."""
    k = _order(encoding)
    if k == 0:
        return f"stored array is theta itself ({dtype})"
    u = np.dtype(_UINT[dtype]).name
    return (
        f"x = stored array; {k} times: x = numpy.cumsum(x, axis=-2, dtype=numpy.{u}); "
        f"theta = x.view(numpy.{dtype})  (axis -2 is time)"
    )
