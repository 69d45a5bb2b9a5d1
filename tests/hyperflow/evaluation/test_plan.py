"""Evaluation episodes: the same episodes for every run of a seed, and shifted ones on request."""

from __future__ import annotations

import numpy as np
import pytest

from hyperflow.data import load_dataset
from hyperflow.data.episodes import EpisodeSpec, build_episode
from hyperflow.errors import UserError
from hyperflow.evaluation.plan import episode_jobs, interpolants_for, method_specs
from hyperflow.evaluation.worker import MethodSpec


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


def test_line_search_twins_carry_the_scales():
    drifts = {"linear": "d/linear"}
    names = ["hyperflow_linear", "hyperflow_linear_ls"]
    specs = method_specs(names, {}, 20, drifts, "euler", [1, 20], 13, step_scales=[1, 2.5])
    assert [s.name for s in specs] == [
        "hyperflow_linear@1",
        "hyperflow_linear@20",
        "hyperflow_linear_ls@1",
        "hyperflow_linear_ls@20",
    ]
    assert {s.scales for s in specs[:2]} == {()} and {s.scales for s in specs[2:]} == {(1.0, 2.5)}
    assert all((s.drift, s.chunk, s.kind) == ("linear", 13, "hyperflow") for s in specs)
    assert [s.support_forwards() for s in specs] == [1, 1, 5, 5]
    # direct adapts with no pass, the SMAT merge with one; gradient methods run backward too
    floors = {m: MethodSpec(m, m).support_forwards() for m in ("direct", "smat", "bias_tuning")}
    assert floors == {"direct": 0, "smat": 1, "bias_tuning": None}


def test_step_scales_matter_only_to_line_search_methods():
    # a bad list is the config schema's to refuse (tests/hyperflow/test_config.py); here the
    # scales reach only the _ls methods
    specs = method_specs(["direct", "hyperflow_linear"], {}, 20, {"linear": "d"}, "euler", [1],
                         step_scales=[])  # fmt: skip
    assert [s.name for s in specs] == ["direct", "hyperflow_linear@1"]
    assert specs[1].scales == ()


def test_the_drifts_an_evaluation_needs_include_those_of_line_search_methods():
    # `hyperflow pipeline` trains exactly these: an _ls method alone still needs its drift
    assert interpolants_for(["direct", "hyperflow_cubic_ls"]) == ["piecewise_cubic"]
    names = ["hyperflow_linear", "bias_tuning", "hyperflow_linear_ls", "hyperflow_pl", "smat"]
    assert interpolants_for(names) == ["linear", "piecewise_linear"]
    assert interpolants_for(["direct", "smat"]) == []
