"""engine.average: one record per episode, the mean of its inits' runs."""

from dataclasses import replace

import numpy as np
import pytest

from engine.average import average_inits
from engine.record import make_id
from engine.synthetic import synthetic_records


def _runs(episodes: int, inits: int, noise: float = 0.0, seed: int = 0) -> list:
    """`inits` runs of each episode, in collect's order: one support set and spec per episode,
    theta = the episode's own path + `noise` x an independent draw per run."""
    rng = np.random.default_rng(seed)
    base = synthetic_records(episodes, T=4, P=64, n_support=(3, 6), image=(1, 8, 8), seed=seed)
    out = []
    for e, r in enumerate(base):
        for k in range(inits):
            theta = r.theta + noise * rng.normal(size=r.theta.shape).astype(np.float32)
            meta = {**r.meta, "init": k, "seed": 100 * e + k}
            out.append(replace(r, id=make_id("t", e, k), theta=theta, meta=meta))
    return out


def test_each_episode_becomes_the_mean_of_its_runs():
    runs = _runs(3, 2)
    runs[0] = replace(runs[0], theta=np.zeros_like(runs[0].theta))
    runs[1] = replace(runs[1], theta=np.full_like(runs[1].theta, 2.0))
    out = list(average_inits(runs, 2))
    assert [r.id for r in out] == ["rt-e000000-m02", "rt-e000001-m02", "rt-e000002-m02"]
    assert np.array_equal(out[0].theta, np.ones_like(runs[0].theta))  # (0 + 2) / 2
    assert np.array_equal(out[1].support, runs[2].support) and out[1].episode == runs[2].episode
    # meta: what the runs share stays a value; what differs becomes the runs' list
    assert out[2].meta["init"] == [0, 1] and out[2].meta["seed"] == [200, 201]
    assert out[2].meta["lr"] == runs[4].meta["lr"]
    assert out[2].meta["averaged"] == ["rt-e000002-i00", "rt-e000002-i01"]


def test_the_mean_of_k_runs_holds_a_kth_of_their_disagreement():
    # what the store is for: runs = the episode's path + independent noise; the mean of 4 runs
    # strays from that path with ~1/4 of one run's variance (the drift's unpredictable part)
    clean = {r.id: r.theta for r in _runs(40, 1, seed=3)}
    runs = _runs(40, 4, noise=0.1, seed=3)
    one = np.mean([(r.theta - clean[r.id[:-2] + "00"]) ** 2 for r in runs])
    mean = list(average_inits(runs, 4))
    avg = np.mean([(r.theta - clean[r.id[:-3] + "i00"]) ** 2 for r in mean])
    assert one == pytest.approx(0.01, rel=0.05)
    assert avg / one == pytest.approx(0.25, rel=0.1)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("support", "not the support set and spec of 'rt-e000001-i00'"),
        ("split", "2 runs of one episode together, not 3"),
        ("id", "not an id of make_id"),
    ],
)
def test_runs_that_cannot_be_averaged_are_refused_by_name(fault, message):
    runs = _runs(2, 3)
    if fault == "support":
        runs[4] = replace(runs[4], support=runs[4].support[:-1], labels=runs[4].labels[:-1])
    elif fault == "split":  # an episode's runs not all together (its last run elsewhere)
        runs = runs[:-1]
    else:
        runs[0] = replace(runs[0], id="episode-one")
    with pytest.raises(ValueError, match=message):
        list(average_inits(runs, 3))


def test_one_init_is_nothing_to_average():
    with pytest.raises(ValueError, match="inits must be >= 2"):
        list(average_inits(_runs(1, 2), 1))
