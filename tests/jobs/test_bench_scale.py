"""`hyperflow bench scale` on object storage: the synthetic engine run with its driver SIGKILLed
at 95% of the shards, restarted, and the store checked, all against the S3 endpoint."""

import json

from engine.inspect import inspect_store
from engine.stores import read_records

RECORDS = 800  # 8 shards of 100: the kill lands after 5 (3 short of the end)


def test_scale_bench_on_s3_loses_and_duplicates_nothing_across_a_driver_kill(s3, cli, ray_procs):
    url = f"{s3['url']}/scale"
    mark = ray_procs.mark("scale")
    proc = cli(
        *("bench", "scale", "--records", str(RECORDS), "--out", url, "--json"),
        env={**s3["env"], **ray_procs.env(mark)},
        timeout=600,
    )
    assert not ray_procs.wait_gone(mark), "the bench left Ray processes behind"
    r = json.loads(proc.stdout)
    assert r["store"] == url and r["shards"] == 8
    assert 1 <= r["killed_after_shards"] < 8, "the driver was not killed mid-collection"
    assert r["records_per_format"] == {"zarr": RECORDS, "wds": RECORDS}
    assert r["verify_ok"] and r["resume_first_commit_s"] > 0
    for key in ("commit_s_first_10pct", "commit_s_last_10pct", "verify_mb_per_s"):
        assert r[key] > 0, key
    assert len(r["stream_startup_s"]) == 2  # both ranks streamed a first batch from the bucket
    # what the bucket holds, read back independently of the bench
    assert inspect_store(url, verify=True)["verify"]["ok"]
    for fmt in ("zarr", "wds"):
        ids = [rec.id for rec in read_records(url, fmt)]
        assert len(ids) == len(set(ids)) == RECORDS, fmt


def test_scale_bench_refuses_an_unwritable_out_before_any_work(s3, cli):
    url = "s3://hyperflow-no-such-bucket-5e2a/scale"
    proc = cli("bench", "scale", "--records", "100", "--out", url, env=s3["env"], check=False)
    assert proc.returncode == 2 and url in proc.stderr and "Traceback" not in proc.stderr
