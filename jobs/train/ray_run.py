"""Training as a Ray Train run: `hyperflow train|pretrain --workers N [--min-workers M]`.

The driver (this command, or a pipeline stage inside a submitted job) needs no GPU: it asks Ray
Train (`TorchTrainer`, Train V2) for N workers with the config's cpus_per_worker and
gpus_per_worker each, and every worker runs the same per-rank function a torchrun rank runs,
with Accelerate inside (gloo on CPU workers, NCCL on GPUs; Ray Train sets up the process group).

- Checkpoints go through `ray.train.report(..., checkpoint=...)`: each rank writes its part into
  a local temporary directory, Ray merges them into OUT/checkpoints/step-N/ (RunConfig storage
  OUT, run name "checkpoints": stable, so a resubmitted job finds its checkpoints), on any URL
  the storage layer takes (an fsspec filesystem wrapped for pyarrow). The files are the torchrun
  checkpoint's, so `--resume` works either way.
- train.max_failures: a lost worker or node restarts the run from the last reported checkpoint.
- Elastic (M < N): the data plan is over N shares whatever the world size (engine.stream), so
  records per optimizer step (the global batch) stay fixed across a resize, each rank taking a
  larger part, and no record of the interrupted epoch is repeated or dropped.
- What ran where: OUT/checkpoints/attempts.json gets one entry per attempt (world_size, the Ray
  node ids of its ranks, resumed_from_step, and `ended`, the cause a failed attempt ended with,
  written by a Ray Train callback); the artifact's JSON copies the list as `attempts`.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import ray
import ray.train
import torch
from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer

from engine.pool import connect
from engine.storage import Location, location
from hyperflow.errors import UserError
from jobs.train.state import CHECKPOINTS, PROGRESS, checkpoint_name, progress_of, write_state

ATTEMPTS = "attempts.json"  # under OUT/checkpoints/


@dataclass
class RayRun:
    """A Ray Train worker's view of its run, handed to the per-rank function."""

    shares: int  # data shares: the run's most workers (engine.stream)
    out: str
    attempts: list = field(default_factory=list)

    def resume_from(self, prepared) -> str | None:
        """The checkpoint Ray Train restarts from, else the one --resume found."""
        ckpt = ray.train.get_checkpoint()
        return prepared.resume_from if ckpt is None else PurePosixPath(ckpt.path).name

    def checkpoints(self, accelerator, signature: dict, progress: dict) -> RayCheckpoints:
        """This attempt recorded (rank 0), then the checkpointer of its ranks."""
        nodes = [None] * accelerator.num_processes
        node = ray.get_runtime_context().get_node_id()
        if accelerator.num_processes > 1:
            torch.distributed.all_gather_object(nodes, node)
        else:
            nodes = [node]
        ckpts = location(self.out).child(CHECKPOINTS)
        attempts = json.loads(ckpts.read_bytes(ATTEMPTS)) if ckpts.exists(ATTEMPTS) else []
        attempts.append(
            {
                "world_size": accelerator.num_processes,
                "nodes": nodes,
                "resumed_from_step": progress.get("step"),
                "ended": None,
            }
        )
        if accelerator.is_main_process:
            ckpts.write_bytes(ATTEMPTS, json.dumps(attempts).encode())
        accelerator.wait_for_everyone()
        return RayCheckpoints(signature, attempts)


class RayCheckpoints:
    """jobs.train.loop.Checkpoints through ray.train.report: the same files as LocalCheckpoints."""

    def __init__(self, signature: dict, attempts: list):
        self.signature, self.attempts = signature, attempts

    def save(self, accelerator, step, epoch, start, gen) -> None:
        with tempfile.TemporaryDirectory(prefix="hyperflow-ckpt-") as tmp:
            write_state(accelerator, Path(tmp), gen)
            if accelerator.is_main_process:
                extra = {"world_size": accelerator.num_processes, "attempts": self.attempts}
                data = progress_of(step, epoch, start, self.signature, extra)
                (Path(tmp) / PROGRESS).write_bytes(data)
            # a barrier: Ray registers the checkpoint once every rank has uploaded its part
            ray.train.report(
                {"step": step},
                checkpoint=Checkpoint.from_directory(tmp),
                checkpoint_dir_name=checkpoint_name(step),
            )


class _AttemptEnds(UserCallback):
    """Runs in Ray Train's controller: the cause of a failed attempt, into attempts.json."""

    def __init__(self, out: str):
        self.out = out

    def after_exception(self, run_context, worker_exceptions) -> None:
        ckpts = location(self.out).child(CHECKPOINTS)
        if not ckpts.exists(ATTEMPTS):
            return
        attempts = json.loads(ckpts.read_bytes(ATTEMPTS))
        if attempts and attempts[-1]["ended"] is None:
            cause = "; ".join(
                f"rank {r}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                if str(e).strip()
                else f"rank {r}: {type(e).__name__}"
                for r, e in sorted(worker_exceptions.items())
            )
            attempts[-1]["ended"] = cause
            ckpts.write_bytes(ATTEMPTS, json.dumps(attempts).encode())


@dataclass
class Resources:
    """One worker's Ray resources and the run's failure settings (train.* or pretrain.*)."""

    cpus: float
    gpus: float
    max_failures: int
    placement_timeout: float

    @classmethod
    def of(cls, section) -> Resources:
        return cls(
            section.cpus_per_worker,
            section.gpus_per_worker,
            section.max_failures,
            section.placement_timeout,
        )

    def per_worker(self) -> dict:
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}


def run_workers(worker_fn, config: dict, out: Location, workers: int, min_workers, res) -> None:
    """Run `worker_fn(config)` as a Ray Train run of `workers` (elastic down to `min_workers`)
    workers with `res`, checkpoints under `out`; UserError when it fails for good."""
    elastic = min_workers is not None and min_workers < workers
    _wait_for_room(min_workers if elastic else workers, res)
    ckpts = out.child(CHECKPOINTS)
    if ckpts.exists(ATTEMPTS) and not config.get("resume"):
        ckpts.remove(ATTEMPTS)  # a fresh run: earlier attempts that never checkpointed
    storage, fs = _storage(out)
    trainer = TorchTrainer(
        worker_fn,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=(min_workers, workers) if elastic else workers,
            use_gpu=res.gpus > 0,
            resources_per_worker=res.per_worker(),
        ),
        run_config=RunConfig(
            name=CHECKPOINTS,
            storage_path=storage,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=res.max_failures),
            callbacks=[_AttemptEnds(out.url)],
        ),
    )
    try:
        trainer.fit()
    except Exception as e:  # Ray Train's TrainingFailedError carries the workers' errors
        raise UserError(f"the Ray Train run failed (max_failures={res.max_failures}): {e}") from e


def launch(args, cfg, out: Location) -> None:
    """`hyperflow train --workers N`: the drift or SMAT run as Ray Train workers."""
    connect(args.address)
    config = {"argv": worker_argv(args.argv), "shares": args.workers, "resume": args.resume}
    res = Resources.of(cfg.train)
    run_workers(_train_worker, config, out, args.workers, args.min_workers, res)
    print(f"Ray Train run finished: {out.url}", flush=True)


def _train_worker(config: dict) -> None:
    from hyperflow.config import load_config
    from jobs.cli import build_parser
    from jobs.train.command import train_rank

    args = build_parser(only="train").parse_args(config["argv"])
    # the driver checked --out (a fresh run over checkpoints was refused there); an attempt
    # resumes from Ray Train's newest registered checkpoint, else from where --resume started
    args.resume = config["resume"]
    train_rank(args, load_config(args.config, args.set), RayRun(config["shares"], args.out))


def worker_argv(argv: list[str]) -> list[str]:
    """The command line a worker parses: without the options that start ranks, and with local
    paths made absolute (a worker's working directory is not the driver's)."""
    drop = {"--workers", "--min-workers", "--address", "--nproc", "--nnodes", "--rdzv-endpoint"}
    paths = {"--out", "--store", "--target"}
    out, skip, absolute = [], False, False
    for a in argv:
        if skip or absolute:
            out += [] if skip else [location(a).url]
            skip = absolute = False
            continue
        name, eq, value = a.partition("=")
        if name in drop:
            skip = not eq
        elif name in paths and eq:
            out.append(f"{name}={location(value).url}")
        else:
            absolute = name in paths
            out.append(a)
    return out


def _storage(out: Location):
    """(storage_path, storage_filesystem) for RunConfig: Ray Train writes OUT/checkpoints/."""
    if out.local:
        return out.root, None
    import pyarrow.fs

    return out.root, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(out.fs))


def _wait_for_room(needed: int, res: Resources) -> None:
    """UserError naming the resources unless the cluster's nodes can host `needed` workers
    within res.placement_timeout seconds. Meanwhile the autoscaler, if the cluster has one, is
    asked for them (request_resources), since it adds nodes only for resources in demand."""
    from ray.autoscaler.sdk import request_resources

    deadline = time.monotonic() + res.placement_timeout
    want = res.per_worker()
    request_resources(bundles=[want] * needed)
    try:
        while True:
            fits = sum(_fits(n["Resources"], want) for n in ray.nodes() if n["Alive"])
            if fits >= needed:
                return
            if time.monotonic() >= deadline:
                where = ray.get_runtime_context().gcs_address
                raise UserError(
                    f"the Ray cluster at {where} has room for {fits} training worker(s) of "
                    f"{want}, the run needs {needed} (waited {res.placement_timeout:g} s): "
                    f"lower --workers / --min-workers or the config's cpus_per_worker / "
                    f"gpus_per_worker"
                )
            time.sleep(1.0)
    finally:
        request_resources(bundles=[])  # Ray Train's own placement group holds them from here


def _fits(total: dict, want: dict) -> int:
    return min(int(total.get(k, 0) // v) for k, v in want.items() if v > 0)
