"""Ray actors that survive their own death: bounded in-flight work, resubmission on failure.

`ray.util.ActorPool` gives up when an actor dies; collection must not. Each item is submitted to
one actor at a time (at most `depth` in flight per actor, bounded with `ray.wait`); when an actor
dies (killed, OOM, node lost) its in-flight items go back to the queue and a fresh actor takes its
place, so every item completes exactly once from the driver's point of view.

Replacements are budgeted per job, not per run: a day on preemptible nodes loses many actors, so
the budget is a share of the items (`replace_fraction`, at least `min_replacements`), and every
death is logged with the actor's node and the cause. An actor that the cluster cannot place
within `placement_timeout` seconds (no node has the CPUs/GPUs it asks for) ends the job with a
message naming the missing resources instead of waiting forever.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import ray
from ray._private import ray_constants
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from engine.errors import UserError

ACTOR_DEATHS = (RayActorError, ActorDiedError, ActorUnavailableError)


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: `address`, else RAY_ADDRESS, else None (start a local cluster)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (UserError) unless something accepts TCP connections at a GCS `address`.

    ray.init(address=...) against a closed port retries for many minutes (measured: still
    retrying after 10 min with Ray 2.60), so a typo or a cluster that is down would look like a
    hang. "auto"/"local" and Ray Client (ray://) addresses are left to Ray.
    """
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    where = "--address" if address != os.environ.get("RAY_ADDRESS") else "RAY_ADDRESS"
    if "://" in address:
        raise UserError(
            f"{where} {address!r}: give the cluster's GCS address host:port (the --port of "
            "`ray start --head`, e.g. 127.0.0.1:6379), not a URL; the dashboard URL "
            "(http://...:8265) is for `ray job submit`"
        )
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"{where} {address!r} is not of the form host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(
            f"cannot reach the Ray cluster at {where} {address!r}: "
            f"{e.strerror or e} (nothing accepts connections there within {timeout:g} s). "
            f"Start one with `ray start --head --port {port}`, fix the address, or leave out "
            "--address to run on a local cluster"
        ) from None


# Ray's own: a job's entrypoint and every driver it starts inherit the job's config from it
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
RUNTIME_ENV_VAR = "HYPERFLOW_RAY_RUNTIME_ENV"  # JSON runtime env for connect(), see stage_env


def stage_env(code_dirs: list[str]) -> dict[str, str]:
    """The environment for a driver started from inside a Ray job (a pipeline stage).

    Such a driver must not inherit the job's config: when it exits, Ray deletes the job's
    unpacked working_dir on that node (seen with Ray 2.60), the very directory the job's
    entrypoint and its next stages run from. It gets the job's runtime env instead through
    RUNTIME_ENV_VAR, with the working_dir replaced by `code_dirs` (the packages, as py_modules,
    uploaded under URIs of their own) so that its actors still run the submitted code."""
    env = dict(os.environ)
    job = env.pop(JOB_CONFIG_VAR, None)
    if job is not None:
        runtime = dict(json.loads(job).get("runtime_env") or {})
        if runtime.pop("working_dir", None) is not None:
            runtime.pop("excludes", None)
            runtime["py_modules"] = [*code_dirs, *runtime.get("py_modules", [])]
        env[RUNTIME_ENV_VAR] = json.dumps(runtime)
    return env


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """ray.init against `address` (or RAY_ADDRESS), else a private local cluster."""
    if ray.is_initialized():
        return
    address = resolve_address(address)
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if os.environ.get(RUNTIME_ENV_VAR):
        kwargs["runtime_env"] = json.loads(os.environ[RUNTIME_ENV_VAR])
    if address is None or _is_loopback(address):
        # A private cluster stays on loopback. Ray maps 127.0.0.1 to the node's outward IP
        # unless multi-node clusters are disabled, which this (documented) switch does; the
        # env var reaches the raylet and workers, the constant this already-imported driver.
        # A cluster joined at a loopback address gets the same switch: one started on loopback
        # (`ray start --node-ip-address 127.0.0.1` with the switch) listens on 127.0.0.1 only,
        # and Ray would otherwise dial the outward IP and retry for minutes.
        os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    else:
        check_reachable(address)  # seconds, not the minutes ray.init retries for
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = ""
        if address is not None and os.environ.get("RAY_AUTH_MODE") != "token":
            # a rejected token only shows in Ray's log lines; ray.init just fails to connect
            hint = (
                "; if the cluster uses token authentication (Ray's default), export "
                "RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)"
            )
        raise UserError(
            f"cannot reach the Ray cluster at --address {address!r}: {e}{hint}"
        ) from None


class ResilientPool:
    """n actors of `actor_cls` (a plain class); map items through one of its methods."""

    def __init__(
        self,
        actor_cls: type,
        n: int,
        init_kwargs: dict,
        num_cpus: float = 1,
        num_gpus: float = 0,
        depth: int = 2,
        min_replacements: int = 8,
        replace_fraction: float = 0.25,
        placement_timeout: float = 300.0,
        log=None,
    ):
        if n < 1:
            raise ValueError(f"need at least one actor, got {n}")
        self._resources = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
        self._remote = ray.remote(actor_cls).options(num_cpus=num_cpus, num_gpus=num_gpus)
        self._init_kwargs = init_kwargs
        self._depth = depth
        self._min_replacements, self._replace_fraction = min_replacements, replace_fraction
        self._placement_timeout = placement_timeout
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.actors = [self._remote.remote(**init_kwargs) for _ in range(n)]
        self._ready = [a.__ray_call__.remote(_node_of) for a in self.actors]  # node id once placed
        self.replaced = 0
        self.deaths: list[dict] = []  # {"slot", "node", "cause"} per actor death
        self._wait_ready()

    def _wait_ready(self) -> None:
        # a failing constructor fails every replacement the same way: report it, don't retry
        n, timeout = len(self._ready), self._placement_timeout
        done, pending = ray.wait(self._ready, num_returns=n, timeout=timeout)
        try:
            ray.get(done)
        except ACTOR_DEATHS as e:
            self.shutdown()
            raise UserError(f"{self._remote} workers failed to start: {e}") from None
        if pending:
            self._refuse_placement(len(pending), timeout)

    def _refuse_placement(self, unplaced: int, waited: float) -> None:
        self.shutdown()
        free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        raise UserError(
            f"{unplaced} of {len(self.actors)} workers could not be placed for {waited:.0f} s: "
            f"each needs {self._resources}; the cluster has {free or 'none'} free. Add nodes "
            "with these resources, or lower --workers / cpus_per_worker / gpus_per_worker"
        )

    def _unplaced(self) -> list[int]:
        """Slots whose actor has not started (no node could take it yet)."""
        ready, _ = ray.wait(self._ready, num_returns=len(self._ready), timeout=0)
        return [i for i, r in enumerate(self._ready) if r not in ready]

    def _node(self, i: int) -> str:
        try:
            return ray.get(self._ready[i], timeout=0)[:12]
        except Exception:  # never placed, or died before it said
            return "unknown"

    def map_unordered(
        self, method: str, items: Iterable[Any], unpack: bool = False
    ) -> Iterator[tuple[Any, Any]]:
        """Yield (item, result) as results arrive; actor deaths resubmit the item elsewhere.

        unpack: each item is a tuple of the method's arguments (default: its one argument).
        """
        queue = deque(items)
        n_items = len(queue)
        budget = max(self._min_replacements, int(self._replace_fraction * n_items))
        inflight: dict[ray.ObjectRef, tuple[int, Any]] = {}
        load = {i: 0 for i in range(len(self.actors))}
        idle_since = time.monotonic()
        while queue or inflight:
            for i in list(load):
                while queue and load[i] < self._depth:
                    item = queue.popleft()
                    call = getattr(self.actors[i], method)
                    ref = call.remote(*item) if unpack else call.remote(item)
                    inflight[ref] = (i, item)
                    load[i] += 1
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=5.0)
            if not done:
                self._check_placement(idle_since)
                continue
            idle_since = time.monotonic()
            ref = done[0]
            i, item = inflight.pop(ref)
            load[i] -= 1
            try:
                result = ray.get(ref)
            except ACTOR_DEATHS as e:
                queue.appendleft(item)
                if self.replaced >= budget:
                    raise RuntimeError(
                        f"{self.replaced} workers died, the budget for {n_items} items "
                        f"({self._replace_fraction:g} of them, at least "
                        f"{self._min_replacements}); last cause: {_cause(e)}"
                    ) from None
                self._replace(i, inflight, queue, e)
                load[i] = 0
                continue
            yield item, result

    def _check_placement(self, idle_since: float) -> None:
        # nothing finished for a while: fine if every actor runs (long items), not if some
        # actor still waits for a node that can take it
        unplaced = self._unplaced()
        waited = time.monotonic() - idle_since
        if unplaced and waited > self._placement_timeout:
            self._refuse_placement(len(unplaced), waited)

    def _replace(self, i: int, inflight: dict, queue: deque, error: Exception) -> None:
        # an actor died: requeue everything else it held and start a fresh one in its slot
        death = {"slot": i, "node": self._node(i), "cause": _cause(error)}
        self.deaths.append(death)
        self._log(f"worker {i} on node {death['node']} died ({death['cause']}); replacing it")
        for ref in [r for r, (j, _) in inflight.items() if j == i]:
            queue.appendleft(inflight.pop(ref)[1])
        # ActorUnavailableError does not mean dead: the old actor may still be running an item
        # we are about to hand to its successor (two writers on one shard). Make sure it is gone.
        ray.kill(self.actors[i], no_restart=True)
        self.replaced += 1
        self.actors[i] = self._remote.remote(**self._init_kwargs)
        self._ready[i] = self.actors[i].__ray_call__.remote(_node_of)

    def call_all(self, method: str, *args) -> list[Any]:
        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


def _node_of(_self) -> str:
    # runs inside the actor (via __ray_call__): the id of the node it was placed on
    return ray.get_runtime_context().get_node_id()


def _cause(error: Exception) -> str:
    text = str(error).strip().splitlines()
    first = next((line for line in text if line.strip()), type(error).__name__)
    return f"{type(error).__name__}: {first[:200]}"
