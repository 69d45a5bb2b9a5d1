from dataclasses import replace

import numpy as np
import pytest

from engine.record import make_id, record_diff, validate_record
from engine.synthetic import synthetic_records


def test_make_id_is_deterministic_and_dotless():
    assert make_id("a7", 123, 2) == "ra7-e000123-i02"
    assert make_id("a7", 123, 2) == make_id("a7", 123, 2)
    assert "." not in make_id("run_1", 0, 0)


@pytest.mark.parametrize("run,ep,init", [("a.b", 0, 0), ("", 0, 0), ("a/b", 0, 0), ("a", -1, 0)])
def test_make_id_refuses_bad_parts(run, ep, init):
    with pytest.raises(ValueError):
        make_id(run, ep, init)


BREAKAGES = {
    "id": lambda r: replace(r, id="ra-e000001.i00"),
    "support": lambda r: replace(r, support=r.support.astype(np.float32)),
    "labels": lambda r: replace(r, labels=r.labels[:-1]),
    "theta": lambda r: replace(r, theta=r.theta.astype(np.float64)),
    "loss": lambda r: replace(r, loss=r.loss[:-1]),
    "episode": lambda r: replace(r, episode={"classes": (1, 2)}),
    "meta": lambda r: replace(r, meta={"lr": np.float32(0.1)}),
}


@pytest.mark.parametrize("field", sorted(BREAKAGES))
def test_validate_names_the_broken_field(make_records, field):
    r = make_records(1)[0]
    validate_record(r)
    with pytest.raises(ValueError, match=field):
        validate_record(BREAKAGES[field](r))


def test_record_diff(make_records):
    a, b = make_records(2)
    assert record_diff(a, a) == []
    assert record_diff(a, replace(a, theta=a.theta.astype(np.float16))) == ["theta"]
    assert record_diff(a, replace(a, meta={**a.meta, "lr": 1.0})) == ["meta"]
    assert set(record_diff(a, b)) >= {"id", "theta", "loss"}


def test_synthetic_records_look_like_adam_trajectories():
    recs = synthetic_records(4, T=20, P=2000, n_support=(10, 25))
    r = recs[0]
    assert r.theta.shape == (21, 2000) and r.loss.shape == (21,)
    step = np.abs(np.diff(r.theta, axis=0)).mean()
    assert 3e-3 < step < 2e-2, step  # Adam with lr 1e-2 moves each bias ~lr per step
    assert 0.05 < r.theta[0].std() < 0.15
    assert len({len(x.support) for x in recs}) > 1  # N varies
    assert len({x.id for x in recs}) == 4
    for x in recs:
        validate_record(x)
