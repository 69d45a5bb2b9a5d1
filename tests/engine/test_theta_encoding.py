import zlib

import numpy as np
import pytest

from engine.stores.encoding import THETA_ENCODINGS, decode_recipe, decode_theta, encode_theta
from engine.synthetic import synthetic_records


def _hard_theta(dtype, shape=(3, 9, 40)):
    # Sign crossings, zeros of both signs, inf/nan and subnormals must all survive bit-exactly.
    x = np.random.default_rng(0).normal(0, 0.1, shape)
    x[..., 1, :3] = [np.inf, -np.inf, np.nan]
    x[..., 2, :3] = [0.0, -0.0, 1e-42 if dtype == "float32" else 1e-7]
    x[..., 3, :] = -x[..., 2, :]
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("enc", sorted(THETA_ENCODINGS))
def test_roundtrip_is_bit_exact(enc, dtype):
    th = _hard_theta(dtype)
    for x in (th, th[0]):  # [R, T+1, P] and [T+1, P]
        back = decode_theta(encode_theta(x, enc), enc, dtype)
        assert back.dtype == x.dtype and back.shape == x.shape
        assert np.array_equal(back.view(np.uint8), x.view(np.uint8))


@pytest.mark.parametrize("enc", sorted(THETA_ENCODINGS))
def test_plain_numpy_recipe_decodes(enc):
    th = _hard_theta("float16")[0]
    x = encode_theta(th, enc)
    for _ in range(THETA_ENCODINGS[enc]):  # what decode_recipe tells a plain numpy user
        x = np.cumsum(x, axis=-2, dtype=np.uint16)
    assert np.array_equal(x.view(np.float16).view(np.uint16), th.view(np.uint16))
    assert ("cumsum" in decode_recipe(enc, "float16")) == (THETA_ENCODINGS[enc] > 0)


def test_delta2_compresses_adam_trajectories_best():
    th = np.stack([r.theta for r in synthetic_records(4, T=20, P=3000)]).astype(np.float16)
    size = {e: len(zlib.compress(encode_theta(th, e).tobytes(), 6)) for e in THETA_ENCODINGS}
    assert size["delta2"] < size["delta"] < size["raw"], size
