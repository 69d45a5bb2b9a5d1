"""The drift network as a training task (jobs.train.loop): its checks, its prepared objective and
its artifact, drift.safetensors + drift.json."""

from __future__ import annotations

import resource
from dataclasses import asdict

import torch
from accelerate.utils import set_seed
from torch import nn

from engine.stream import split_support
from hyperflow.config import to_dict
from hyperflow.drift import DriftNet, drift_config, save_drift
from hyperflow.drift.objective import drift_loss
from jobs.train.accel import full_state, local_parameters
from jobs.train.data import warmup_cosine
from jobs.train.inputs import SupportCache, fit_normalizers, support_inputs
from jobs.train.state import Prepared, preflight


def check(args, cfg) -> None:
    """Settings that only the drift trainer reads, before anything is written."""
    drift_config(cfg.train, args.interpolant or cfg.train.interpolant).resolved()


def prepare(args, cfg, out, world: int, shares=None, restarted=False, build=True) -> Prepared:
    """Target, store and checkpoints checked (jobs.train.state.preflight; build=False: the
    model is not built, for a launcher)."""
    interpolant = args.interpolant or cfg.train.interpolant
    model, manifest, sig, resume_from = preflight(
        args, cfg.train, interpolant, out, world, shares, restarted, build
    )
    return Prepared(model, sig, resume_from, horizon=int(manifest.config["steps"]))


class DriftTask:
    """h(theta, t | S) regressed onto the interpolant's velocity at random t."""

    name = "train"

    def __init__(self, args, cfg, accelerator, prepared: Prepared):
        model = prepared.model
        tc = self.tc = cfg.train
        self.interpolant = args.interpolant or tc.interpolant
        self.steps, self.checkpoint_every, self.grad_clip = (
            tc.steps,
            tc.checkpoint_every,
            tc.grad_clip,
        )
        self.batch_size, self.seed = tc.batch_size, tc.seed
        self.accelerator, self.model = accelerator, model
        rank = accelerator.process_index
        drift_cfg = drift_config(tc, self.interpolant).resolved()
        # the same initial weights on every rank: DDP would broadcast rank 0's, FSDP shards each
        # rank's own copy (a mixture of inits if they differed)
        set_seed(tc.seed)
        net = DriftNet(model.layout, drift_cfg, model.backbone, model.feature_dim, prepared.horizon)
        self.params = net.num_parameters()  # before prepare: FSDP shards them
        set_seed(tc.seed + rank)
        # the same generator on every rank, so every rank computes the same normalisers
        normaliser_gen = torch.Generator().manual_seed(tc.seed)
        fit_normalizers(net, model, args.store, tc, self.interpolant, normaliser_gen)
        self.gen = torch.Generator().manual_seed(tc.seed * 1000 + rank)  # t samples; per rank
        trained = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=tc.lr, weight_decay=tc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(tc.warmup, tc.steps))
        self.objective, self.opt, self.sched = accelerator.prepare(
            _Objective(net, self.interpolant, tc.theta_noise), opt, sched
        )
        self.core = accelerator.unwrap_model(self.objective)
        if tc.fsdp:
            held = local_parameters(self.objective)
            print(f"rank {rank} holds {held:,} of {self.params:,} parameters (FSDP)")
        # frozen encoder: (features, site stats) per record
        self.cache = SupportCache(tc.cache_bytes, tc.cache_records)
        self._misses = 0
        dims = ", ".join(f"{k}={v}" for k, v in asdict(drift_cfg.dims()).items())
        self.summary = f"drift ({tc.size}: {dims}; {self.params:,} parameters; {self.interpolant})"

    def loss(self, batch: dict) -> torch.Tensor:
        acc = self.accelerator
        # the frozen encoder's inputs outside autocast (cached: computed once, in float32); the
        # objective under it (prepare() autocasts a DDP forward, not an FSDP2 one: accel.py)
        features, stats = support_inputs(self.core.net, self.model, batch, self.cache)
        with acc.autocast():
            return self.objective(
                batch["theta"].to(acc.device),
                features,
                [y.to(acc.device) for y in split_support(batch)[1]],
                stats,
                self.gen,
            )

    def log_fields(self) -> dict:
        misses, self._misses = self.cache.misses - self._misses, self.cache.misses
        return {"encoded": misses, "params": self.params}  # records through the frozen encoder

    def finish(self, args, cfg, step: int, meta: dict) -> None:
        """Gather the weights (every rank: FSDP) and write the artifact (rank 0); `meta`: what
        every artifact records (jobs.train.command.train_rank)."""
        state = full_state(self.accelerator, self.objective, "net.")
        if self.accelerator.is_main_process:
            extra = {**meta, "train_config": to_dict(cfg)["train"]}
            save_drift(self.core.net, args.out, extra, state=state)
            print(f"wrote {args.out}/drift.safetensors ({self.interpolant}, {step} steps)")
        # this rank's resident-memory high-water mark (its loader workers not included)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(f"rank {self.accelerator.process_index}: peak RSS {peak:.0f} MB", flush=True)


class _Objective(nn.Module):
    """The whole loss in one forward, so DDP sees (and syncs) every trained parameter."""

    def __init__(self, net: DriftNet, interpolant: str, theta_noise: float):
        super().__init__()
        self.net, self.interpolant, self.theta_noise = net, interpolant, theta_noise

    def forward(self, knots, features, labels, stats, gen) -> torch.Tensor:
        # knots [B, T+1, P]; labels: B tensors [N_i]; frozen encoder: features [sum N, F] and
        # raw site stats [B, K, P] or None; trained encoder: normalised images [sum N, C, H, W]
        if not self.net.frozen_encoder:
            features, stats = self.net.support_inputs(features, labels)
        task = self.net.make_task(features, labels, stats)
        return drift_loss(self.net, knots, task, self.interpolant, gen, self.theta_noise)
