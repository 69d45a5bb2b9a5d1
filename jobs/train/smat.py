"""SMAT (hyperflow/smat) as a training task of `hyperflow train --method smat`.

The drift trainer's machinery, shared: the same loop (jobs.train.loop), stream, Accelerator
(train.grad_accum and train.mixed_precision apply), checkpoints and exact resume, torchrun ranks
or Ray Train workers. What differs is the objective: a record gives SMAT one task, its support
set and its teacher, the record's bias-tuned endpoint theta_T (hyperflow/smat/objective.py).
Settings come from the config's `smat` section. Writes DIR/smat.safetensors and DIR/smat.json
(config, target id, layout hash, steps, world size), which `hyperflow evaluate --smat DIR` loads.
"""

from __future__ import annotations

import torch
from accelerate.utils import set_seed

from engine.manifest import config_hash
from engine.stream import split_support
from hyperflow.config import SmatTrainConfig, to_dict
from hyperflow.errors import UserError
from hyperflow.model import load_target
from hyperflow.smat import Smat, SmatConfig, SmatEpisode, SmatObjective, save_smat
from jobs.train.data import warmup_cosine
from jobs.train.state import Prepared, check_max_records, check_store, checkpoint_to_resume

# smat.* keys a resumed run must share with its checkpoint (smat.steps may grow)
SIGNED = ("experts", "tau", "kd_weight", "temperature", "width", "batch_size", "lr", "gate_lr")
SIGNED += ("weight_decay", "warmup", "seed")


def check(args, cfg) -> None:
    """Settings that only the SMAT trainer reads, before anything is written."""
    if cfg.train.fsdp:
        raise UserError("train.fsdp=true shards the drift network; SMAT trains without it")


class SmatTask:
    """SMAT's dense delta, gates and router, meta-trained with CE + KD from theta_T."""

    name = "smat"

    def __init__(self, args, cfg, accelerator, prepared: Prepared):
        sc = self.sc = cfg.smat
        self.steps, self.checkpoint_every, self.grad_clip = (
            sc.steps,
            sc.checkpoint_every,
            sc.grad_clip,
        )
        self.batch_size, self.seed = sc.batch_size, sc.seed
        self.accelerator = accelerator
        model = self.model = prepared.model.to(accelerator.device)
        set_seed(sc.seed)  # the same initial SMAT on every rank
        smat = Smat(smat_config(sc), model.layout.size, model.feature_dim)
        rank = accelerator.process_index
        self.gen = torch.Generator().manual_seed(sc.seed * 1000 + rank)  # gates, augmentations
        groups = smat.param_groups(sc.lr, sc.gate_lr)
        for g in groups:  # decay pulls the dense delta to 0; on log_alpha it would bias the gates
            g["weight_decay"] = sc.weight_decay if g["name"] == "dense" else 0.0
        opt = torch.optim.AdamW(groups)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(sc.warmup, sc.steps))
        self.objective, self.opt, self.sched = accelerator.prepare(
            SmatObjective(model, smat), opt, sched
        )
        self.core = accelerator.unwrap_model(self.objective)
        self.summary = f"SMAT ({sc.experts} experts, tau {sc.tau})"
        self._last = None

    def loss(self, batch: dict) -> torch.Tensor:
        with self.accelerator.autocast():
            self._last = self.objective(_episodes(batch), self.gen)
        return self._last.total

    def log_fields(self) -> dict:
        loss = self._last
        return {
            "ce": loss.ce.item(),
            "kd": loss.kd.item(),
            "sparsity": loss.sparsity.item(),
            "density": loss.density.tolist(),  # [M] expected share of non-zero gates
        }

    def finish(self, args, cfg, step: int, meta: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        extra = {**meta, "smat_config": to_dict(cfg)["smat"]}
        save_smat(self.core.smat, self.model, args.out, extra)
        density = self.core.smat.gates.density().tolist()
        print(f"wrote {args.out}/smat.safetensors ({step} steps, non-zero gates {density})")


def smat_config(sc: SmatTrainConfig) -> SmatConfig:
    """The model's SmatConfig from the `smat` config section (checked by the schema)."""
    return SmatConfig(sc.experts, sc.tau, sc.kd_weight, sc.temperature, sc.width)


def prepare(args, cfg, out, world: int, shares=None, restarted=False, build=True) -> Prepared:
    """Target, store and checkpoints checked before any work (build=False: the model is not
    built, for a launcher; see jobs.train.state.preflight)."""
    tc, sc = cfg.train, cfg.smat
    model = load_target(args.target) if build else None
    manifest = check_store(args.store, args.target, model, tc.format)
    check_max_records(manifest, tc)
    signature = {
        "method": "smat",
        **{f"smat.{k}": getattr(sc, k) for k in SIGNED},
        **({"world_size": world} if shares is None else {"data_shares": shares}),
        "train.grad_accum": tc.grad_accum,
        "train.shuffle_buffer": tc.shuffle_buffer,
        "train.format": tc.format,
        "train.max_records": tc.max_records,
        "store records": sum(s.records for s in manifest.shards_of(tc.format)),
        "store config": config_hash(manifest.config),
    }
    resume_from = checkpoint_to_resume(out, signature, args.resume, restarted)
    return Prepared(model, signature, resume_from)


def _episodes(batch: dict) -> list[SmatEpisode]:
    """One SMAT task per record: its support set and its teacher theta_T (batch theta
    [B, T+1, P] float32)."""
    xs, ys = split_support(batch)
    return [SmatEpisode(x, y, theta[-1]) for x, y, theta in zip(xs, ys, batch["theta"])]
