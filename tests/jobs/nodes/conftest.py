"""One multi-node Ray cluster on one machine (ray.cluster_utils.Cluster, as Ray's own tests do),
shared by this package's tests: a 0-CPU head (with the dashboard, for job submission), so every
actor and training worker runs on a worker node, and two 1-CPU worker nodes that tests remove
hard and add back. This process is a driver of it. All on 127.0.0.1; the fixture ends exactly
the processes it started.

The nodes' processes (collection and evaluation actors, Ray Train workers) inherit what is set
while they start: the loopback switch, one intra-op thread, HYPERFLOW_TRAIN_SEEN (trainers log
the record ids of every step), Ray Train's shorter timings and no preemption watcher (NODE_ENV)
and the loopback S3 endpoint (moto takes any credentials). The variables stay set for this
package's tests, so subprocesses such as `hyperflow train --address` join the same cluster with
them; they are undone when the package ends.

(`ray start` cannot build this cluster here: with the loopback switch on it refuses a second
node, and with it off the nodes advertise the machine's outward address.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

NODE_ENV = {
    "HYPERFLOW_TRAIN_SEEN": "1",
    "OMP_NUM_THREADS": "1",
    # Ray Train waits this long for a worker group's resources before giving up on a size (60 s
    # by default): right after a node is removed its CPU may still look free for that long
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20",
    # the controller polls its workers every 2 s by default: a run's end and a lost worker are
    # seen that much later
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # one actor process less per Ray Train run: no run here is preempted (spot instances)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
# the GCS declares a removed node dead after ~3 failed 1-s health checks instead of ~5 of 3 s
# (Ray's own node-failure tests shorten them too), so runs see a lost node sooner
HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="package")
def nodes(ray_procs, free_port, s3_endpoint):
    """(cluster, [worker node, worker node]); cluster.dashboard is the job-submission URL."""
    mark = ray_procs.mark("nodes")
    with pytest.MonkeyPatch.context() as mp:
        env = {**ray_procs.env(mark), **NODE_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
        env |= {"AWS_ACCESS_KEY_ID": "nodes-test", "AWS_SECRET_ACCESS_KEY": "nodes-test"}
        env |= {"AWS_DEFAULT_REGION": "us-east-1"}
        # every node binds and advertises loopback only (see engine.pool.connect)
        env[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
        # a submitted job's entrypoint `python` is looked up in the PATH the head started with
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        _reload_ray_config()  # RAY_AUTH_MODE was read when ray was imported
        dashboard = free_port()
        head = {"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1"}
        head["_system_config"] = HEALTH_CHECKS
        # the head's agent (it takes the job submissions) on a free port, not Ray's fixed
        # default: another test process may run a cluster of its own (pytest -n)
        head["dashboard_agent_listen_port"] = free_port()
        cluster = Cluster(
            initialize_head=True, head_node_args={**head, "dashboard_port": dashboard}
        )
        cluster.dashboard = f"http://127.0.0.1:{dashboard}"
        try:
            workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
            ray.init(address=cluster.address)
            assert cluster.address.startswith("127.0.0.1:"), cluster.address
            yield cluster, workers
        finally:
            ray.shutdown()
            cluster.shutdown()
            mp.undo()
            _reload_ray_config()
    assert not ray_procs.wait_gone(mark, 60), "the cluster's processes outlived its shutdown"


def _reload_ray_config() -> None:
    from ray._raylet import Config

    Config.initialize("")
