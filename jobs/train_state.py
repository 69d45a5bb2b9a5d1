"""Where a `hyperflow train` run stands: checks of target, store and checkpoints before any
work; the run signature a resumed run must share with its checkpoint; saving and restoring a
checkpoint (Accelerate state, each rank's t-sampling generator, and progress.json, whose presence
marks the checkpoint complete); the per-step JSONL logs a resume trims back to its checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from engine.manifest import Manifest, config_hash
from hyperflow.errors import UserError
from hyperflow.model import TargetModel, load_target, target_id


def preflight(args, tc, interpolant: str, ckpt_root: Path, world: int):
    """Check target, store and checkpoints before any work; returns (model, manifest,
    run signature, checkpoint directory to resume from or None)."""
    model = load_target(args.target)
    manifest = check_store(Path(args.store), args.target, model, tc.format)
    signature = run_signature(tc, interpolant, world, manifest)
    done = complete_checkpoints(ckpt_root)
    if not args.resume:
        if done:
            raise UserError(
                f"--out {ckpt_root.parent} already holds checkpoints of a training run (newest "
                f"{done[-1].name}); pass --resume to continue it, or choose another --out"
            )
        return model, manifest, signature, None
    if not done:
        raise UserError(f"--resume: no complete checkpoint under {ckpt_root}")
    saved = json.loads((done[-1] / "progress.json").read_text()).get("run", {})
    for key, value in signature.items():
        if saved.get(key) != value:
            raise UserError(
                f"--resume: checkpoint {done[-1]} was written with {key}={saved.get(key)!r}, "
                f"this run has {key}={value!r}; resume with the same settings or train into "
                f"another --out"
            )
    return model, manifest, signature, done[-1]


def check_store(store: Path, target_dir: str, model: TargetModel, fmt: str) -> Manifest:
    manifest = Manifest.load(store)
    cfg = manifest.config
    if cfg.get("layout_hash") != model.layout.hash():
        raise UserError(
            f"store {store} has bias layout {cfg.get('layout_hash')}, the target "
            f"{target_dir} has {model.layout.hash()}"
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


def run_signature(tc, interpolant: str, world: int, manifest: Manifest) -> dict:
    """What a resumed run must share with its checkpoint: the network's shape and objective, the
    data order (plan inputs) and what the restored optimizer would silently override."""
    return {
        "interpolant": interpolant,
        "train.size": tc.size,
        "train.encoder": tc.encoder,
        "train.site_stats": tc.site_stats,
        "train.theta_noise": tc.theta_noise,
        "world_size": world,
        "train.batch_size": tc.batch_size,
        "train.seed": tc.seed,
        "train.shuffle_buffer": tc.shuffle_buffer,
        "train.format": tc.format,
        "train.lr": tc.lr,
        "train.weight_decay": tc.weight_decay,
        "store records": sum(s.records for s in manifest.shards_of(tc.format)),
        "store config": config_hash(manifest.config),
    }


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (progress.json written), oldest first."""
    return sorted(p for p in root.glob("step-*") if (p / "progress.json").is_file())


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def save_checkpoint(accelerator, root, step, epoch, start, signature, gen) -> None:
    path = root / f"step-{step:08d}"
    accelerator.save_state(str(path))  # rank 0: model, optimizer, scheduler; every rank: RNG
    # save_state leaves custom generators out (and registered objects are saved by rank 0 only)
    gen_file = path / f"t_generator_rank{accelerator.process_index}.npy"
    np.save(gen_file, gen.get_state().numpy(), allow_pickle=False)
    accelerator.wait_for_everyone()  # save_state has no barrier: all ranks' files first
    if accelerator.is_main_process:
        progress = {"step": step, "epoch": epoch, "batches_done": start, "run": signature}
        _write_json_atomic(path / "progress.json", progress)  # marks the checkpoint complete
    accelerator.wait_for_everyone()


def resume(accelerator, path: Path, gen: torch.Generator) -> tuple[int, int, int]:
    """Load checkpoint `path` (signature already checked); returns (step, epoch, start batch)."""
    state = json.loads((path / "progress.json").read_text())
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"--resume: checkpoint {path} does not fit this network: {e}") from None
    gen_file = path / f"t_generator_rank{accelerator.process_index}.npy"
    if not gen_file.is_file():
        raise UserError(f"--resume: checkpoint {path} lacks {gen_file.name}")
    gen.set_state(torch.from_numpy(np.load(gen_file, allow_pickle=False)))
    accelerator.print(
        f"resumed from {path} at global step {state['step']} "
        f"(epoch {state['epoch']}, batch {state['batches_done']})"
    )
    return state["step"], state["epoch"], state["batches_done"]


def open_step_log(path: Path, keep_through: int):
    """Open a per-step JSONL file for appending, first dropping rows of steps > keep_through
    (0 on a fresh run: start empty; the resumed step: forget the steps lost in a crash)."""
    rows = path.read_text().splitlines() if path.is_file() else []
    kept = [r for r in rows if r.strip() and json.loads(r)["step"] <= keep_through]
    if len(kept) != len(rows):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(r + "\n" for r in kept))
        os.replace(tmp, path)
    return open(path, "a")


def write_row(f, row: dict) -> None:
    if f is not None:
        f.write(json.dumps(row) + "\n")
        f.flush()  # a killed run keeps every step it logged
