"""Forward-only step-size control for HyperFlow: a line search along the drift's displacement.

Where a shift is new, the drift's endpoint theta_T falls short: its support loss drops far less
than bias-tuning's. The search scores theta_0 + s (theta_T - theta_0) for a few scales s with the
support loss bias-tuning minimises (simulate.support_loss: prototypes from the clean support set,
cross-entropy of one augmented copy drawn from the episode's seed) and keeps the lowest. All
scales go through one batched forward call and nothing runs backward; s = 1 is plain HyperFlow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from hyperflow.adapt.simulate import support_loss
from hyperflow.data.episodes import Episode
from hyperflow.model import TargetModel

# support-set forward passes per scale: the clean support (prototypes at theta_s) and its
# augmented copy (the loss) both go through the target at theta_s
FORWARDS_PER_SCALE = 2


def best_on_line(
    theta0: torch.Tensor,
    theta_t: torch.Tensor,
    scales: Sequence[float],
    loss: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(theta [P], index of the chosen scale, losses [K]): the point theta_0 + s (theta_T -
    theta_0) of lowest loss over the K scales; `loss` maps thetas [K, P] to [K]. Ties keep the
    first scale in grid order."""
    s = torch.tensor(scales, dtype=theta_t.dtype, device=theta_t.device)  # [K]
    thetas = theta0 + s.unsqueeze(1) * (theta_t - theta0)  # [K, P]
    losses = loss(thetas)  # [K]
    # a scale that overflows the network gives NaN: never pick it
    k = int(torch.argmin(losses.nan_to_num(nan=math.inf)))
    return thetas[k], k, losses


@torch.inference_mode()
def line_search(
    model: TargetModel,
    episode: Episode,
    theta0: torch.Tensor,
    theta_t: torch.Tensor,
    scales: Sequence[float],
    seed: int,
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """best_on_line with the simulator's support loss of the episode, augmentation from `seed`:
    FORWARDS_PER_SCALE support-set passes per scale, in one call, no backward."""
    return best_on_line(
        theta0, theta_t, scales, lambda thetas: support_loss(model, episode, thetas, seed)
    )
