import json

import pytest

from engine.inspect import format_report, inspect_store, storage_report
from engine.record import THETA_DTYPES
from engine.stores import STORES, open_store
from engine.stores.encoding import THETA_ENCODINGS
from engine.synthetic import synthetic_records
from hyperflow.errors import UserError


def test_inspect_counts(tmp_path, make_store, config):
    m, recs = make_store(tmp_path, [4, 5])
    d = inspect_store(tmp_path)
    assert d["records"] == 9 and d["shards"] == 2 * len(STORES)
    assert d["bytes"] == sum(s.bytes for s in m.shards)
    assert d["bytes_per_record"] == pytest.approx(d["bytes"] / 9)
    assert d["domains"] == {"braille": 3, "greek": 3, "latin": 3}
    assert d["config"] == config and d["formats"] == list(STORES)
    for fmt in STORES:
        assert d["per_format"][fmt]["records"] == 9
    assert "verify" not in d
    json.dumps(d)  # the CLI prints it with --json
    text = format_report(inspect_store(tmp_path, verify=True))
    assert "9 records in" in text and "greek" in text and "verify: OK" in text


def test_inspect_missing_or_empty_store(tmp_path, config):
    with pytest.raises(UserError, match="no trajectory store"):
        inspect_store(tmp_path / "missing")
    open_store(tmp_path, config, ["wds"])
    with pytest.raises(UserError, match="no committed shards"):
        inspect_store(tmp_path)


def test_storage_report_meets_the_float16_target():
    recs = synthetic_records(6, T=20, P=3000, n_support=25, image=(1, 32, 32))
    r = storage_report(recs)
    assert r["raw_float32_bytes_per_record"] == 21 * 3000 * 4 + 21 * 4 + 25 * 1024 + 25 * 8
    for fmt in STORES:
        cells = r["formats"][fmt]
        assert set(cells) == {f"{d}/{e}" for d in THETA_DTYPES for e in THETA_ENCODINGS}
        assert cells["float16/delta2"]["ratio"] <= 0.55, (fmt, cells["float16/delta2"])
        assert (
            cells["float16/delta2"]["bytes_per_record"] < cells["float16/raw"]["bytes_per_record"]
        )
        assert cells["float16/raw"]["bytes_per_record"] < cells["float32/raw"]["bytes_per_record"]
