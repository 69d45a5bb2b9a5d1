import numpy as np
import pytest
import torch

from hyperflow.data.episodes import (
    EpisodeSampler,
    EpisodeSpec,
    build_episode,
    sample_episode,
    sample_variable_episode,
)
from hyperflow.errors import UserError


def _assert_consistent(dataset, ep):
    """Labels, images and spec agree: every image is the one the spec names, of its class."""
    d = dataset.domains[ep.spec.domain]
    for x, y, idx in (
        (ep.support_x, ep.support_y, ep.spec.support),
        (ep.query_x, ep.query_y, ep.spec.query),
    ):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and len(x) == len(y) == len(idx)
        classes = np.array(ep.spec.classes)[y.numpy()]
        np.testing.assert_array_equal(d.labels[list(idx)], classes)
        if ep.spec.shift is None:
            np.testing.assert_array_equal(x.numpy(), d.images[list(idx)])
    assert set(ep.support_y.tolist()) == set(range(ep.way)) == set(ep.query_y.tolist())
    assert ep.support_y.tolist() == sorted(ep.support_y.tolist())  # class by class
    assert not set(ep.spec.support) & set(ep.spec.query)


def test_fixed_episode_shape_and_labels(tiny_dataset):
    spec = sample_episode(tiny_dataset.domains["alpha"], seed=7, way=5, shot=3, query=4)
    ep = build_episode(tiny_dataset, spec)
    assert ep.way == 5 and ep.support_x.shape == (15, 1, 32, 32) and ep.query_x.shape[0] == 20
    assert ep.support_y.bincount().tolist() == [3] * 5
    _assert_consistent(tiny_dataset, ep)


def test_json_round_trip_rebuilds_identical_tensors(tiny_dataset):
    spec = sample_episode(
        tiny_dataset.domains["beta"], seed=3, way=4, shot=2, query=3, shift="noise"
    )
    again = EpisodeSpec.from_json(spec.to_json())
    assert again == spec and EpisodeSpec.from_dict(spec.to_dict()) == spec
    a, b = build_episode(tiny_dataset, spec), build_episode(tiny_dataset, again)
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    clean = build_episode(tiny_dataset, EpisodeSpec.from_dict({**spec.to_dict(), "shift": None}))
    assert not torch.equal(a.support_x, clean.support_x)  # the shift was applied on the fly
    _assert_consistent(tiny_dataset, a)


def test_from_dict_rejects_foreign_keys():
    with pytest.raises(UserError, match="episode spec"):
        EpisodeSpec.from_dict({"domain": "x", "classes": [1], "support": [], "bogus": 1})


def test_variable_episodes_vary_way_and_shot(tiny_dataset):
    d = tiny_dataset.domains["gamma"]  # 20 classes x 7 images
    ways, imbalanced = set(), 0
    for seed in range(40):
        spec = sample_variable_episode(d, seed, max_way=12, max_shot=5, query=2)
        ep = build_episode(tiny_dataset, spec)
        _assert_consistent(tiny_dataset, ep)
        shots = ep.support_y.bincount().tolist()
        assert 5 <= ep.way <= 12 and all(1 <= s <= 5 for s in shots)
        assert ep.query_y.bincount().tolist() == [2] * ep.way
        ways.add(ep.way)
        imbalanced += len(set(shots)) > 1
    assert len(ways) >= 5 and imbalanced >= 30


@pytest.mark.parametrize("variable", [False, True])
def test_sampler_is_reproducible_from_the_seed(tiny_dataset, variable):
    kw = dict(domains=["alpha", "beta"], way=5, shot=3, query=2, variable=variable)
    a = EpisodeSampler(tiny_dataset, seed=11, shifts=("blur", "thick"), **kw)
    b = EpisodeSampler(tiny_dataset, seed=11, shifts=("blur", "thick"), **kw)
    specs = [a.spec(i) for i in range(30)]
    assert specs == [b.spec(i) for i in reversed(range(30))][::-1]  # order of calls irrelevant
    assert {s.domain for s in specs} == {"alpha", "beta"}
    assert {s.shift for s in specs} == {"blur", "thick"}
    assert len({s.to_json() for s in specs}) == 30
    assert specs != [EpisodeSampler(tiny_dataset, seed=12, **kw).spec(i) for i in range(30)]
    for s in specs[:5]:
        _assert_consistent(tiny_dataset, build_episode(tiny_dataset, s))


def test_errors_name_the_bad_value(tiny_dataset):
    alpha = tiny_dataset.domains["alpha"]  # 8 classes x 12 images
    with pytest.raises(UserError, match=r"domain 'alpha' has 8 classes, way=9 needs 9"):
        sample_episode(alpha, 0, way=9, shot=1, query=1)
    with pytest.raises(UserError, match=r"'alpha' class 'c0' has 12 images, shot\+query=13"):
        sample_episode(alpha, 0, way=2, shot=5, query=8)
    for bad in (
        dict(way=0, shot=1, query=1),
        dict(way=2, shot=0, query=1),
        dict(way=2, shot=1, query=0),
    ):
        with pytest.raises(UserError, match="must be >= 1"):
            sample_episode(alpha, 0, **bad)
    with pytest.raises(UserError, match="'nowhere'"):
        EpisodeSampler(tiny_dataset, ["nowhere"], way=2, shot=1, query=1, seed=0)
    with pytest.raises(UserError, match="'nowhere'"):
        build_episode(tiny_dataset, EpisodeSpec("nowhere", (0,), (0,), (1,)))
    with pytest.raises(UserError, match="'sparkle'"):
        EpisodeSampler(tiny_dataset, ["alpha"], way=2, shot=1, query=1, seed=0, shifts=("sparkle",))
    with pytest.raises(UserError, match="way=9"):
        EpisodeSampler(tiny_dataset, ["alpha", "beta"], way=9, shot=1, query=1, seed=0)
