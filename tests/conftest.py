"""Shared fixtures: a tiny untrained target model and synthetic episodes (no dataset build)."""

from __future__ import annotations

import os

import pytest
import torch

from hyperflow.data.episodes import Episode, EpisodeSpec
from hyperflow.model import TargetConfig, TargetModel


def pytest_configure(config):
    """Under pytest-xdist (`make test`: 2 workers on 2 cores) every process runs one intra-op
    thread: the worker itself and, through OMP_NUM_THREADS, every process its tests start that
    does not set its own (Ray workers and torchrun ranks already do). The cores are busy with the
    other worker's processes all along (96-99% measured), and two 2-thread processes on them
    thrash instead of sharing."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Every test under tests/jobs is `slow`: they run `hyperflow` commands, Ray clusters and
    torchrun ranks (minutes). `pytest -m "not slow"` (make test-fast) runs the unit tests.

    Slowest first: the multi-node tests (tests/jobs/nodes), then the other job tests, then the
    unit tests. Under pytest-xdist (`make test`: `-n 2 --dist loadfile`) work units are handed out
    in this order, so the two workers end on files of seconds, not on a job file of minutes."""
    jobs = config.rootpath / "tests" / "jobs"
    nodes = jobs / "nodes"
    for item in items:
        if item.path.is_relative_to(jobs):
            item.add_marker(pytest.mark.slow)
    # stable: the order within each of the three kinds is kept
    items.sort(key=lambda item: [not item.path.is_relative_to(d) for d in (nodes, jobs)])


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile with tests/jobs/nodes as one work unit: its two files share one multi-node
    Ray cluster (a package fixture), which each worker running one of them would start again
    (~60 s, and two 3-node clusters at once on 2 cores). Units go out in collection order, not
    xdist's default of most tests first (which put the minute-long job files last)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    nodes = "tests/jobs/nodes/"

    class Scheduler(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodes if nodeid.startswith(nodes) else super()._split_scope(nodeid)

    config.option.loadscopereorder = False
    return Scheduler(config, log)


@pytest.fixture(scope="session")
def tiny_model() -> TargetModel:
    torch.manual_seed(0)
    model = TargetModel(TargetConfig(backbone="test_resnet", channels=1, image_size=32)).eval()
    # non-trivial BatchNorm statistics so biases matter the way they do after training
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _make_episode(seed: int, way: int = 5, shot: int = 3, query: int = 4) -> Episode:
    """Synthetic episode: class-specific blobs plus noise, uint8 [N, 1, 32, 32]."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(way, 1, 32, 32, generator=g) * 255

    def draw(k):
        x = centers.repeat_interleave(k, 0) + 40 * torch.randn(way * k, 1, 32, 32, generator=g)
        return x.clamp(0, 255).to(torch.uint8), torch.arange(way).repeat_interleave(k)

    sx, sy = draw(shot)
    qx, qy = draw(query)
    spec = EpisodeSpec("synthetic", tuple(range(way)), tuple(range(way * shot)), (), None, seed)
    return Episode(spec, sx, sy, qx, qy)


@pytest.fixture
def make_episode():
    return _make_episode


@pytest.fixture
def episodes():
    return [_make_episode(s) for s in range(4)]


# --- a real S3 endpoint on loopback -----------------------------------------------------------
# moto's ThreadedMotoServer, as s3fs and zarr-python use in their own suites: a real HTTP server
# speaking the S3 API; code reaches it only through AWS_ENDPOINT_URL, like any S3 endpoint.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "hyperflow-test-key",
    "AWS_SECRET_ACCESS_KEY": "hyperflow-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of an S3 server on 127.0.0.1 for this test session."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request):
    """A fresh bucket: {"url": "s3://<bucket>", "bucket": name, "env": the variables a process
    needs to reach it}. The variables are also set in this process for the test."""
    import re
    import uuid

    import boto3

    env = {"AWS_ENDPOINT_URL": s3_endpoint, **S3_CREDENTIALS}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    stem = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{stem}-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    import fsspec

    fsspec.filesystem("s3").invalidate_cache()  # listings cached by an earlier test's bucket
    return {"url": f"s3://{bucket}", "bucket": bucket, "env": env}
