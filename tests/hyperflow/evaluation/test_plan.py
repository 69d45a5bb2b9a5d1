"""Evaluation episodes: the same episodes for every run of a seed, and shifted ones on request."""

from __future__ import annotations

import numpy as np
import pytest

from hyperflow.data import load_dataset
from hyperflow.data.episodes import EpisodeSpec, build_episode
from hyperflow.errors import UserError
from hyperflow.evaluation.plan import episode_jobs


@pytest.fixture(scope="module")
def glyphs():
    return load_dataset("glyphs", 32, 1, None)


def _images(data, job) -> np.ndarray:
    return build_episode(data, EpisodeSpec.from_json(job.spec)).support_x.numpy()


def test_shifts_change_the_images_of_the_same_episodes(glyphs):
    base = glyphs.names("base")[:2]
    plain = episode_jobs(glyphs, base, 6, 5, 5, 15, seed=3)
    shifted = episode_jobs(glyphs, base, 6, 5, 5, 15, seed=3, shifts=("noise", "contrast"))
    # the same classes and images are drawn (the shift family comes from the stream after them)
    for a, b in zip(plain, shifted):
        sa, sb = EpisodeSpec.from_json(a.spec), EpisodeSpec.from_json(b.spec)
        assert (a.domain, a.index, a.seed) == (b.domain, b.index, b.seed)
        assert sa.classes == sb.classes
        assert sb.shift in ("noise", "contrast") and sa.shift is None
        assert not np.array_equal(_images(glyphs, a), _images(glyphs, b))
    # both families occur across 12 episodes
    assert {EpisodeSpec.from_json(j.spec).shift for j in shifted} == {"noise", "contrast"}


def test_an_unknown_shift_is_refused_by_name(glyphs):
    with pytest.raises(UserError, match="warp"):
        episode_jobs(glyphs, glyphs.names("base")[:1], 1, 5, 5, 15, seed=0, shifts=("warp",))
