"""Per-bias activation statistics of a support set: what a domain shift does at every bias.

Each tunable bias is added to one module output (see adapt.episode_biases). For every coordinate
c of theta we record, over an episode's support images at the target's own biases:

    mean      mean of that output channel over images and positions
    log_std   log of its standard deviation over images and positions
    log_sep   log of the standard deviation, over the episode's classes, of the class means of
              per-image channel means (how well the channel separates this episode's classes)

so stats is [B, 3, P], aligned with theta. A contrast or inversion shift moves `mean` and
`log_std` of early channels far from their base-domain values, which the prototype embedding of
the last layer alone hides; bias-tuning reacts to exactly these channels. One forward pass gives
both these statistics and the encoder features, so conditioning on them costs no extra pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hyperflow.adapt.episode_biases import site_hooks
from hyperflow.bias import BiasLayout
from hyperflow.drift.compiled import site_pass

STATS = ("mean", "log_std", "log_sep")
_EPS = 1e-6


def support_site_stats(
    backbone: nn.Module,
    layout: BiasLayout,
    images: Tensor,
    labels: list[Tensor],
    chunk: int = 0,
    compiled: bool = False,
) -> tuple[Tensor, Tensor]:
    """One pass of `backbone` over images [N, C, H, W] (episodes concatenated; labels: per episode
    [N_b] in 0..way-1) -> (features [N, F], stats [B, len(STATS), P] float32). chunk > 0: the pass
    runs `chunk` images at a time, with the same result (everything is per image until the
    segment means) and a peak memory of one chunk's activations. compiled: the pass runs
    torch.compile'd with the hooks in its graph (drift/compiled.py; same values up to float
    rounding of fused reductions)."""
    assert images.shape[0] == sum(len(y) for y in labels), "images and labels disagree"
    dev = images.device
    sizes = torch.tensor([len(y) for y in labels], device=dev)
    episode = torch.repeat_interleave(torch.arange(len(labels), device=dev), sizes)  # [N]
    ways = torch.tensor([int(y.max()) + 1 for y in labels], device=dev)
    offsets = torch.cumsum(ways, 0) - ways
    cls = torch.cat([y.to(dev) + o for y, o in zip(labels, offsets)])  # [N] global class id
    class_episode = torch.repeat_interleave(torch.arange(len(labels), device=dev), ways)  # [Cg]
    ends = [e.offset + e.numel for e in layout.entries]
    assert [e.offset for e in layout.entries] == [0, *ends[:-1]], "layout must be contiguous"
    L = len(layout.entries)
    numel = torch.tensor([e.numel for e in layout.entries], device=dev)  # [L]
    # entry -> per-image sum, norm [n, n_l] and positions; a compiled pass has its own dict
    run, moments = site_pass(backbone) if compiled else (backbone, {})
    moments.clear()
    parts, m_parts, q_parts = [], [], []
    with site_hooks(backbone, layout, lambda i, _entry, axis: _moments_hook(moments, i, axis)):
        for x in images.split(chunk) if chunk > 0 else [images]:
            parts.append(run(x))
            assert len(moments) == L, f"hooks fired at {len(moments)} of {L} bias sites"
            count = [moments[i][2] for i in range(L)]  # positions per channel of each layer
            counts = torch.tensor(count, dtype=torch.float32, device=dev).repeat_interleave(numel)
            # all layers at once: per image, per coordinate mean m and mean square q [n, P]; as
            # x.mean (a sum divided by the count on CPU) and norm^2 / count per layer would be
            sums = torch.cat([moments[i][0] for i in range(L)], dim=1)
            norms = torch.cat([moments[i][1] for i in range(L)], dim=1)
            m_parts.append(sums / counts)
            q_parts.append(norms.pow(2) / counts)
    features, m, q = torch.cat(parts), torch.cat(m_parts), torch.cat(q_parts)
    B = len(labels)
    mu = _segment_mean(m, episode, B)  # [B, P]
    var = (_segment_mean(q, episode, B) - mu.pow(2)).clamp_min(0)
    class_mu = _segment_mean(m, cls, len(class_episode))  # [Cg, P]
    # index_select: advanced indexing mu[class_episode] measured ~0.25 ms here
    sep = _segment_mean((class_mu - mu.index_select(0, class_episode)).pow(2), class_episode, B)
    stats = torch.stack([mu, 0.5 * (var + _EPS).log(), 0.5 * (sep + _EPS).log()], dim=1)
    return features, stats


def _moments_hook(moments: dict, index: int, axis: int):
    def hook(_module, _inputs, out: Tensor) -> None:
        # out [N, ..., C, ...] -> per image, per channel sum and 2-norm [N, C] and the count of
        # positions summed. Reductions over the other axes in place: no channels-last copy, no
        # squared temporary (the hooks ran at ~40% of the adaptation's time and peak memory with
        # them); dividing by the count is left to one op over all layers (~60 fewer small ops a
        # pass, same values)
        x = out.detach()
        dims = [d for d in range(1, x.dim()) if d != axis % x.dim()]
        count = x[0].numel() // x.shape[axis]
        if dims:
            sums = x.sum(dim=dims, dtype=torch.float32)
            norms = torch.linalg.vector_norm(x, dim=dims, dtype=torch.float32)
        else:
            sums, norms = x.float(), x.abs().float()
        moments[index] = (sums, norms, count)

    return hook


def _segment_mean(x: Tensor, segment: Tensor, n: int) -> Tensor:
    # x [N, C], segment [N] in 0..n-1 -> [n, C] mean of the rows of each segment
    total = x.new_zeros(n, x.shape[1]).index_add(0, segment, x)
    return total / torch.bincount(segment, minlength=n).clamp_min(1).unsqueeze(1).to(x.dtype)
