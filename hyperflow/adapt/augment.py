"""Support-set augmentation for the P>M>F protocol: loss on an augmented copy of the support set.

Glyph identity changes under flips, so the augmentation is a small random affine (shift, scale,
rotation) plus brightness/contrast jitter, drawn from an explicit generator so that the batched and
the per-episode simulators see identical augmentations for the same episode seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x float [N, C, H, W] in [-1, 1] -> randomly augmented copy [N, C, H, W]."""
    n = x.shape[0]
    # [N, 6] uniform draws, one row per image, from a CPU generator whatever x's device: the same
    # seed gives the same augmentation on a GPU as on the CPU
    u = torch.rand(n, 6, generator=gen).to(x.device, x.dtype)
    angle = (u[:, 0] - 0.5) * (2 * math.radians(12))
    scale = 0.9 + 0.2 * u[:, 1]
    shift = (u[:, 2:4] - 0.5) * 0.2  # fraction of half the image size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )  # [N, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with the image's own background (its minimum) rather than a fixed value
    bg = x.amin(dim=(1, 2, 3), keepdim=True)
    out = F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg
    contrast = (0.8 + 0.4 * u[:, 4]).view(n, 1, 1, 1)
    brightness = ((u[:, 5] - 0.5) * 0.3).view(n, 1, 1, 1)
    return (out * contrast + brightness).clamp(-1.0, 1.0)
