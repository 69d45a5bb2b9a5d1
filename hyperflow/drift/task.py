"""Task embedding of a support set: encoder features -> class prototypes -> set pooling -> MLP.

Episodes may differ in way and shot. All episodes' classes are processed as one flat batch of
prototypes (C = sum of ways) with index_add / scatter_reduce, so there is no Python loop over
classes and the result does not depend on class order or image order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hyperflow.errors import UserError


@dataclass
class Task:
    """What the drift network knows of a batch of support sets."""

    embedding: Tensor  # [B, task_dim] pooled prototype embedding
    stats: Tensor | None = None  # [B, K, P] normalised per-bias site statistics, or None

    def __len__(self) -> int:
        return self.embedding.shape[0]


class PrototypePooling(nn.Module):
    """Deep-sets pooling: rho(mean_c phi(p_c) ++ max_c phi(p_c) ++ [log way, log shot])."""

    def __init__(self, feature_dim: int, width: int, out_dim: int):
        super().__init__()
        # LayerNorm first: backbone feature scales are arbitrary (the target head uses cosine)
        self.phi = nn.Sequential(
            nn.LayerNorm(feature_dim),
            nn.Linear(feature_dim, width),
            nn.GELU(),
            nn.Linear(width, width),
        )
        # way and shot change the size of the fine-tuning loss and its gradients, so they are
        # given explicitly (mean and max pooling alone cannot count classes)
        self.rho = nn.Sequential(
            nn.Linear(2 * width + 2, width), nn.GELU(), nn.Linear(width, out_dim)
        )

    def forward(self, features: Tensor, labels: list[Tensor]) -> Tensor:
        """features [N, F] of all episodes' images concatenated; labels: per episode [Ns] in
        0..way-1 (every class present), sum of Ns = N. Returns task embeddings [B, out_dim]."""
        assert features.shape[0] == sum(len(y) for y in labels), "features and labels disagree"
        dev = features.device
        ways = [int(y.max()) + 1 for y in labels]
        way = torch.tensor(ways, device=dev)  # [B]
        shots = torch.tensor([len(y) for y in labels], device=dev) / way  # [B] mean shot
        offsets = torch.cumsum(way, 0) - way  # first global class id of each episode
        gid = torch.cat([y.to(dev) + o for y, o in zip(labels, offsets)])  # [N] global class id
        C, B = int(way.sum()), len(labels)
        counts = torch.bincount(gid, minlength=C)  # [C]
        assert bool((counts > 0).all()), f"every class 0..way-1 needs a support image: {ways=}"
        protos = torch.zeros(C, features.shape[1], device=dev, dtype=features.dtype)
        protos = protos.index_add(0, gid, features) / counts.unsqueeze(1)  # [C, F]
        u = self.phi(protos)  # [C, w]
        episode = torch.repeat_interleave(torch.arange(B, device=dev), way)  # [C]
        mean = torch.zeros(B, u.shape[1], device=dev, dtype=u.dtype).index_add(0, episode, u)
        mean = mean / way.unsqueeze(1)  # [B, w]
        idx = episode.unsqueeze(1).expand_as(u)
        mx = torch.full_like(mean, float("-inf"))
        mx = mx.scatter_reduce(0, idx, u, "amax", include_self=False)  # [B, w]
        stats = torch.stack([way.log(), shots.log()], dim=1).to(u.dtype)  # [B, 2]
        return self.rho(torch.cat([mean, mx, stats], dim=1))


def timm_encoder(name: str, in_chans: int = 3) -> tuple[nn.Module, int]:
    """A fresh (randomly initialised) timm backbone without classifier and its feature dim, for
    DriftConfig.encoder != "target"; it maps [N, C, H, W] -> [N, feature_dim] and is trained."""
    import timm  # here, not at the top: see TargetModel.__init__

    if not timm.is_model(name):
        raise UserError(f"drift encoder {name!r} is not a timm model name (nor 'target')")
    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    return model, int(model.num_features)
