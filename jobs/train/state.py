"""Where a `hyperflow train` run stands: checks of target, store and checkpoints before any
work; the run signature a resumed run must share with its checkpoint; saving and restoring a
checkpoint (Accelerate state, each rank's t-sampling generator, and progress.json, whose presence
marks the checkpoint complete); the per-step JSONL logs a resume trims back to its checkpoint.

Checkpoints live under <out>/checkpoints/step-N/, a local directory or a URL prefix. Accelerate's
save_state/load_state only take a local directory: on object storage each rank saves into a
temporary directory and uploads every file of it (and downloads the checkpoint into one to
resume); the temporary directory is removed afterwards. Local checkpoints are written in place.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.manifest import Manifest, config_hash
from engine.storage import Location
from hyperflow.drift.sizes import DIMS, DRIFT_SIZES, drift_config
from hyperflow.errors import UserError
from hyperflow.model import TargetModel, load_target, read_target_info, target_id

CHECKPOINTS, PROGRESS = "checkpoints", "progress.json"


@dataclass
class Prepared:
    """What a trainer checked before any work (every rank, and the launching process)."""

    model: TargetModel | None  # the frozen target from --target (None: a launcher's check)
    signature: dict  # what a resumed run must share with its checkpoint
    resume_from: str | None  # checkpoint name (step-N) to resume from, None: a fresh run
    horizon: int = 0  # T of the store's trajectories (the drift's time range)


def preflight(
    args, tc, interpolant: str, out: Location, world: int, shares=None, restarted=False, build=True
):
    """Check target, store and checkpoints before any work; returns (model, manifest,
    run signature, name of the checkpoint to resume from or None). build=False (a launcher
    that only checks before starting ranks): the model is None and the target is checked
    from its target.json (read_target_info)."""
    model = load_target(args.target) if build else None
    manifest = check_store(args.store, args.target, model, tc.format)
    check_max_records(manifest, tc)
    signature = run_signature(tc, interpolant, world, manifest, shares)
    resume_from = checkpoint_to_resume(out, signature, args.resume, restarted)
    return model, manifest, signature, resume_from


def check_max_records(manifest: Manifest, tc) -> None:
    """UserError unless train.max_records (>= 0 by the schema) is at most the store's records."""
    total = sum(s.records for s in manifest.shards_of(tc.format))
    if tc.max_records > total:
        raise UserError(
            f"train.max_records={tc.max_records} is out of range: the store holds {total} "
            f"{tc.format} records (0: train on all of them)"
        )


def checkpoint_to_resume(
    out: Location, signature: dict, resume: bool, restarted: bool = False
) -> str | None:
    """The newest complete checkpoint under `out` when resuming (its run signature must equal
    `signature`), None for a fresh run (which refuses a directory that holds checkpoints,
    unless `restarted`: a Ray Train attempt after a failure, whose driver checked the directory
    and which may find the parts of a checkpoint Ray never registered)."""
    ckpts = out.child(CHECKPOINTS)
    done = complete_checkpoints(ckpts)
    if not resume:
        if done and not restarted:
            raise UserError(
                f"--out {out.url} already holds checkpoints of a training run (newest "
                f"{done[-1]}); pass --resume to continue it, or choose another --out"
            )
        return None
    if not done:
        raise UserError(f"--resume: no complete checkpoint under {ckpts.url}")
    saved = json.loads(ckpts.read_bytes(f"{done[-1]}/{PROGRESS}")).get("run", {})
    for key, value in signature.items():
        if _saved_value(saved, key) != value:
            raise UserError(
                f"--resume: checkpoint {ckpts.url}/{done[-1]} was written with "
                f"{key}={_saved_value(saved, key)!r}, "
                f"this run has {key}={value!r}; resume with the same settings or train into "
                f"another --out"
            )
    return done[-1]


def check_store(store: str, target_dir: str, model: TargetModel | None, fmt: str) -> Manifest:
    """The store's manifest, after checking it was collected with this target (its bias layout,
    its weights by target id) and holds committed shards of `fmt`. model None: the layout hash
    save_target wrote in target.json, which the target id then ties to the weights."""
    manifest = Manifest.load(store)
    cfg = manifest.config
    if model is not None:
        layout_hash = model.layout.hash()
    else:
        layout_hash = read_target_info(target_dir)["layout_hash"]
    if cfg.get("layout_hash") != layout_hash:
        raise UserError(
            f"store {store} has bias layout {cfg.get('layout_hash')}, the target "
            f"{target_dir} has {layout_hash}"
        )
    if cfg.get("target") != target_id(target_dir):
        raise UserError(
            f"store {store} was collected with target {cfg.get('target')}, "
            f"not {target_dir} ({target_id(target_dir)})"
        )
    if fmt not in manifest.formats:
        raise UserError(f"store {store} holds {manifest.formats}, train.format is {fmt!r}")
    if not manifest.shards_of(fmt):
        raise UserError(f"store {store} is empty: no committed shards (run `hyperflow collect`)")
    return manifest


def run_signature(
    tc, interpolant: str, world: int, manifest: Manifest, shares: int | None = None
) -> dict:
    """What a resumed run must share with its checkpoint: the network's shape and objective, the
    data order (plan inputs) and what the restored optimizer would silently override. A Ray
    Train run plans its data over `shares` (its most workers), which fixes the order whatever
    its world size; a torchrun run over its world size."""
    return {
        "interpolant": interpolant,
        "train.size": tc.size,
        # the architecture itself: the preset's dimensions with the explicit ones over them
        **{f"train.{k}": v for k, v in asdict(drift_config(tc, interpolant).dims()).items()},
        "train.grad_accum": tc.grad_accum,
        "train.fsdp": tc.fsdp,  # (its checkpoints hold the model in another file)
        "train.encoder": tc.encoder,
        "train.site_stats": tc.site_stats,
        "train.theta_noise": tc.theta_noise,
        **({"world_size": world} if shares is None else {"data_shares": shares}),
        "train.batch_size": tc.batch_size,
        "train.seed": tc.seed,
        "train.shuffle_buffer": tc.shuffle_buffer,
        "train.format": tc.format,
        "train.lr": tc.lr,
        "train.weight_decay": tc.weight_decay,
        "train.max_records": tc.max_records,
        "store records": sum(s.records for s in manifest.shards_of(tc.format)),
        "store config": config_hash(manifest.config),
    }


def _saved_value(saved: dict, key: str):
    # a key that checkpoints written before it existed lack: the value they were trained with
    if key in saved:
        return saved[key]
    name = key.removeprefix("train.")
    if name in DIMS and saved.get("train.size") in DRIFT_SIZES:
        return getattr(DRIFT_SIZES[saved["train.size"]], name)
    return {"train.grad_accum": 1, "train.fsdp": False, "train.max_records": 0}.get(key)


def complete_checkpoints(ckpts: Location) -> list[str]:
    """Names (step-N) of the complete checkpoints (progress.json written), oldest first."""
    return sorted(
        k.split("/")[0]
        for k in ckpts.find()
        if k.startswith("step-") and k.count("/") == 1 and k.endswith(f"/{PROGRESS}")
    )


@contextmanager
def _local_dir(loc: Location, key: str, upload: bool):
    """A local directory standing for `key` under `loc`: the directory itself on a local disk;
    on object storage a temporary one, downloaded from `key` first (upload=False) or uploaded
    to `key` when the block ends without an exception (upload=True), each with one recursive
    fsspec transfer."""
    here = loc.local_path(key)
    if here is not None:
        yield here
        return
    with tempfile.TemporaryDirectory(prefix="hyperflow-ckpt-") as tmp:
        if not upload:
            loc.fs.get(f"{loc.path(key)}/", f"{tmp}/", recursive=True)
        yield Path(tmp)
        if upload:
            loc.fs.put(f"{tmp}/", f"{loc.path(key)}/", recursive=True)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def write_state(accelerator, path: Path, gen: torch.Generator) -> None:
    """This rank's part of a checkpoint into the local directory `path`."""
    # rank 0: model, optimizer, scheduler; every rank: RNG. The model's state is the trained
    # weights only: the frozen target is held, not owned, by the drift network and SMAT, and a
    # resume reloads it from --target
    accelerator.save_state(str(path))
    # save_state leaves custom generators out (and registered objects are saved by rank 0)
    gen_file = path / f"t_generator_rank{accelerator.process_index}.npy"
    np.save(gen_file, gen.get_state().numpy(), allow_pickle=False)


def progress_of(step: int, epoch: int, start: int, signature: dict, extra: dict) -> bytes:
    """progress.json: the position, the run signature and `extra` (e.g. Ray Train attempts)."""
    progress = {"step": step, "epoch": epoch, "batches_done": start, "run": signature, **extra}
    return json.dumps(progress).encode()


class LocalCheckpoints:
    """Checkpoints of a torchrun (or single-process) run under OUT/checkpoints/step-N/."""

    def __init__(self, out: Location, signature: dict):
        self.out, self.signature = out, signature

    def save(self, accelerator, step, epoch, start, gen) -> None:
        ckpts, name = self.out.child(CHECKPOINTS), checkpoint_name(step)
        with _local_dir(ckpts, name, upload=True) as path:
            write_state(accelerator, path, gen)
        accelerator.wait_for_everyone()  # save_state has no barrier: all ranks' files first
        if accelerator.is_main_process:
            # one object written whole, last: it marks the checkpoint complete
            data = progress_of(step, epoch, start, self.signature, {})
            ckpts.write_bytes(f"{name}/{PROGRESS}", data)
        accelerator.wait_for_everyone()


def resume(accelerator, out: Location, name: str, gen: torch.Generator) -> dict:
    """Load checkpoint `name` (signature already checked); returns its progress.json (step,
    epoch, batches_done, run, ...). A rank the checkpoint's run did not have (an elastic run
    grown back) starts a fresh generator seeded from (step, rank)."""
    ckpts = out.child(CHECKPOINTS)
    where = f"{ckpts.url}/{name}"
    state = json.loads(ckpts.read_bytes(f"{name}/{PROGRESS}"))
    with _local_dir(ckpts, name, upload=False) as path:
        try:
            accelerator.load_state(str(path))
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(
                f"--resume: checkpoint {where} does not fit this network: {e}"
            ) from None
        gen_file = path / f"t_generator_rank{accelerator.process_index}.npy"
        saved_world = state.get("world_size", state["run"].get("world_size"))
        if gen_file.is_file():
            gen.set_state(torch.from_numpy(np.load(gen_file, allow_pickle=False)))
        elif saved_world is None or accelerator.process_index >= saved_world:
            seed = np.random.SeedSequence([state["step"], accelerator.process_index])
            gen.manual_seed(int(seed.generate_state(1)[0]))
        else:
            raise UserError(f"--resume: checkpoint {where} lacks {gen_file.name}")
    accelerator.print(
        f"resumed from {where} at global step {state['step']} "
        f"(epoch {state['epoch']}, batch {state['batches_done']})"
    )
    return state


class StepLog:
    """A per-step JSONL object under `out`, first trimmed to the rows of steps <= keep_through
    (0 on a fresh run: start empty; the resumed step: forget the steps lost in a crash).

    On a local disk every row is appended and flushed as it comes, so a killed run keeps every
    step it logged. Object storage cannot append: the rows are kept in memory (they are small)
    and sync() rewrites the whole object; train calls it before each checkpoint is marked
    complete and at the end, so the object always holds at least the rows up to the newest
    checkpoint, which is exactly what a resume keeps."""

    def __init__(self, out: Location, key: str, keep_through: int):
        self.out, self.key = out, key
        rows = out.read_bytes(key).decode().splitlines() if out.exists(key) else []
        self.rows = [r for r in rows if r.strip() and json.loads(r)["step"] <= keep_through]
        if len(self.rows) != len(rows):
            self.sync(force=True)
        local = out.local_path(key)
        self._file = open(local, "a") if local is not None else None

    def write(self, row: dict) -> None:
        line = json.dumps(row)
        if self._file is None:
            self.rows.append(line)
            return
        self._file.write(line + "\n")
        self._file.flush()

    def sync(self, force: bool = False) -> None:
        """Object storage: rewrite the object with every row so far (local: already on disk)."""
        if force or self.out.local_path(self.key) is None:
            self.out.write_bytes(self.key, "".join(r + "\n" for r in self.rows).encode())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self.sync()


def write_row(log: StepLog | None, row: dict) -> None:
    if log is not None:
        log.write(row)
