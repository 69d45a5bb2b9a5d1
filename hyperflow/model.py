"""Target model: a timm backbone with a ProtoNet head (cosine logits, learnable scale, as in P>M>F).

Images enter as uint8 [N, C, H, W]; `preprocess` maps them to floats in [-1, 1]. Class
prototypes are the mean support features; logits = scale * cosine(query feature, prototype).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load, load_file, save
from torch import nn

from engine.storage import location
from hyperflow.bias import BiasLayout, select_biases
from hyperflow.config import TargetConfig
from hyperflow.errors import UserError

WEIGHTS, META = "target.safetensors", "target.json"  # what a target is, wherever it is stored


class TargetModel(nn.Module):
    def __init__(self, cfg: TargetConfig):
        super().__init__()
        self.cfg = cfg
        # timm (with torchvision and torch._dynamo) costs ~1.5 s to import: only processes
        # that build a backbone pay it, not every driver and Ray worker that imports this module
        import timm

        try:
            self.backbone = timm.create_model(
                cfg.backbone, pretrained=False, num_classes=0, in_chans=cfg.channels
            )
        except RuntimeError as e:  # timm raises RuntimeError("Unknown model ...")
            raise UserError(f"unknown timm model name {cfg.backbone!r}: {e}") from None
        if cfg.checkpoint:
            self._load_backbone_checkpoint(cfg.checkpoint)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_scale)))
        self.layout: BiasLayout = select_biases(self.backbone, cfg.include, cfg.exclude)
        with torch.no_grad():
            probe = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
            self.feature_dim = self.backbone.eval()(probe).shape[-1]

    def _load_backbone_checkpoint(self, path: str) -> None:
        if not Path(path).is_file():
            raise UserError(f"backbone checkpoint {path!r} does not exist")
        state = load_file(path) if path.endswith(".safetensors") else torch.load(path, "cpu")
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if missing:
            raise UserError(f"checkpoint {path!r} lacks {len(missing)} weights, e.g. {missing[0]}")

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> float [N, C, H, W] in [-1, 1]."""
        return x.float().div(127.5).sub(1.0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """float [N, C, H, W] -> [N, F]."""
        return self.backbone(x)

    def logits(
        self, support_f: torch.Tensor, support_y: torch.Tensor, way: int, query_f: torch.Tensor
    ) -> torch.Tensor:
        """support_f [Ns, F], support_y [Ns], query_f [Nq, F] -> logits [Nq, way]."""
        return self.logit_scale * cosine_logits(prototypes(support_f, support_y, way), query_f)


def prototypes(feats: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
    """feats [N, F], labels [N] in 0..way-1 -> class means [way, F]."""
    onehot = F.one_hot(labels, way).to(feats.dtype)  # [N, way]
    return onehot.t() @ feats / onehot.sum(0).clamp_min(1).unsqueeze(1)


def cosine_logits(protos: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """protos [way, F], query [Nq, F] -> cosine similarities [Nq, way]."""
    return F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).t()


def save_target(model: TargetModel, out: str | os.PathLike, extra: dict | None = None) -> None:
    """Write target.safetensors, then target.json (architecture, bias layout) under `out`, a
    local directory or a URL. Each object is written whole (engine.storage); target.json
    goes last, so a crash in between leaves no target that looks complete."""
    loc = location(out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    info = {
        "config": model.cfg.model_dump(),
        "feature_dim": model.feature_dim,
        "bias_size": model.layout.size,
        "layout_hash": model.layout.hash(),
        "layout": model.layout.to_json(),
        **(extra or {}),
    }
    loc.write_bytes(WEIGHTS, save(state))
    loc.write_bytes(META, json.dumps(info, indent=1).encode())


def read_target_info(target: str | os.PathLike) -> dict:
    """target.json of a target (architecture, feature_dim, bias layout and its hash), read
    without building the model: no timm import, ~2 s less for a process that only checks."""
    loc = location(target)
    try:
        info = json.loads(loc.read_bytes(META))
    except FileNotFoundError:
        raise UserError(f"--target {os.fspath(target)!r} has no {META}") from None
    if not loc.exists(WEIGHTS):
        raise UserError(f"--target {os.fspath(target)!r} has no {WEIGHTS}")
    return info


def load_target(target: str | os.PathLike) -> TargetModel:
    """Rebuild a TargetModel from what `hyperflow pretrain` wrote at `target` (eval mode)."""
    info = read_target_info(target)  # UserError naming the missing file
    loc = location(target)
    weights = loc.local_path(WEIGHTS)  # memory-mapped on a local disk
    state = load_file(str(weights)) if weights else load(loc.read_bytes(WEIGHTS))
    cfg = TargetConfig(**{**info["config"], "checkpoint": None})
    model = TargetModel(cfg)
    model.load_state_dict(state)
    return model.eval()


def target_id(target: str | os.PathLike) -> str:
    """Short digest of a target's weights: stores and drift networks record their target (the
    same bytes give the same id wherever they are stored)."""
    import hashlib

    return hashlib.sha256(location(target).read_bytes(WEIGHTS)).hexdigest()[:16]
