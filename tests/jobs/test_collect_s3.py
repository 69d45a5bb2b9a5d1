"""`hyperflow collect` and `inspect` with the store on object storage (a real S3 endpoint on
127.0.0.1, reached through AWS_ENDPOINT_URL only), and their refusals of unusable URLs."""

import json

import pytest

from engine.storage import location
from engine.stores import read_records

N = 16  # tiny.yaml collect.episodes; inits 1


def test_collect_into_a_bucket_then_inspect_and_verify(
    s3, cli, untrained_target, ray_procs, tmp_path
):
    url = f"{s3['url']}/runs/store"
    work = tmp_path / "work"
    work.mkdir()
    mark = ray_procs.mark("collect-s3")
    env = {**s3["env"], **ray_procs.env(mark), "OMP_NUM_THREADS": "1"}
    argv = ["collect", "--config", "tiny", "--target", str(untrained_target), "--out", url]
    cli(*argv, env=env, cwd=work)
    assert not ray_procs.wait_gone(mark), "collect left Ray processes behind"
    assert list(work.iterdir()) == [], "collect wrote into the working directory"
    report = json.loads(cli("inspect", url, "--json", "--verify", env=env, cwd=work).stdout)
    assert report["records"] == N and report["verify"]["ok"]
    for fmt in ("zarr", "wds"):
        ids = sorted(r.id for r in read_records(url, fmt))
        assert ids == sorted(f"rc-e{e:06d}-i00" for e in range(N)), fmt
    keys = location(url).find()
    assert "manifest.json" in keys and any(k.startswith("commits/wds/") for k in keys)
    for blob in (location(url).read_bytes(k) for k in keys if k.endswith(".json")):
        assert s3["env"]["AWS_SECRET_ACCESS_KEY"].encode() not in blob, "a secret was written"


@pytest.mark.parametrize("problem", ["no-such-bucket", "no-credentials"])
def test_unusable_store_url_exits_2_naming_it(problem, s3, cli, untrained_target, tmp_path):
    env = dict(s3["env"])
    url = f"{s3['url']}/store"
    if problem == "no-such-bucket":
        url = "s3://hyperflow-no-such-bucket-4d1c/store"
    else:  # and no shared files a default profile could come from
        empty = tmp_path / "empty"
        empty.write_text("")
        env.update(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
        env.update(AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty))
    argv = ["collect", "--config", "tiny", "--target", str(untrained_target), "--out", url]
    proc = cli(*argv, env=env, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert url in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert s3["env"]["AWS_SECRET_ACCESS_KEY"] not in proc.stderr + proc.stdout
    assert location(s3["url"]).find() == {}, "something was written"
