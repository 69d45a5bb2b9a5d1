"""Site statistics: one batched pass equals per-episode hand computation, is invariant to image and
class order, and a stats-conditioned drift network uses them and survives a save/load."""

import copy

import pytest
import torch

from hyperflow.adapt.episode_biases import bias_site
from hyperflow.drift import DriftConfig, DriftNet, load_drift, save_drift
from hyperflow.drift.site_stats import STATS, support_site_stats
from hyperflow.errors import UserError


def _support(model, episode):
    return model.preprocess(episode.support_x), episode.support_y


def _reference(model, x, y) -> dict[str, torch.Tensor]:
    """Per-episode moments, each [P] float64, from the raw outputs at each bias site, written
    plainly and computed in float64 (a copy of the model), so they are the true values that any
    float32 kernel approximates. Outputs are cloned: an in-place activation after the site
    overwrites them later."""
    model = copy.deepcopy(model).double()
    outputs = {}
    modules = dict(model.backbone.named_modules())
    handles = []
    for i, e in enumerate(model.layout.entries):
        site, axis = bias_site(modules[e.name.rpartition(".")[0]])
        handles.append(
            site.register_forward_hook(
                lambda m, a, o, i=i, ax=axis: outputs.update({i: (o.clone(), ax)})
            )
        )
    with torch.no_grad():
        model.backbone(x.double())
    for h in handles:
        h.remove()
    out = {k: torch.empty(model.layout.size, dtype=torch.float64) for k in _MOMENTS}
    for i, e in enumerate(model.layout.entries):
        o, axis = outputs[i]
        o = o.movedim(axis, 1).flatten(2)  # [N, C, positions]
        block = slice(e.offset, e.offset + e.numel)
        out["mean"][block] = o.mean(dim=(0, 2))
        out["var"][block] = o.var(dim=(0, 2), unbiased=False)
        out["square"][block] = o.pow(2).mean(dim=(0, 2))
        per_image = o.mean(dim=2)  # [N, C]
        means = torch.stack([per_image[y == c].mean(0) for c in range(int(y.max()) + 1)])
        out["sep"][block] = means.var(dim=0, unbiased=False)
    return out


_MOMENTS = ("mean", "var", "square", "sep")


def _moment_errors(stats: torch.Tensor, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """stats [len(STATS), P] float32 -> [3, P]: the error of its mean, variance and class
    separation against the float64 reference, each in units of the coordinate's mean square.

    Why these units: every float32 result here is a sum over the reduced images and positions of
    activations that themselves carry float32 rounding (kernels round differently per CPU, BLAS
    build, thread count and batch size). Such errors scale with the magnitude of the summed
    values, i.e. with E[x^2] for the second moments and sqrt(E[x^2]) for the mean, not with the
    (possibly much smaller) variance: var = E[x^2] - mu^2 cancels, which is why a tolerance
    relative to the statistic itself held only on the CPU it was tuned on."""
    stats = stats.double()
    square = ref["square"] + 1e-6  # the statistics carry eps = 1e-6 inside their logs
    var = (2 * stats[1]).exp() - 1e-6  # log_std = 0.5 * log(var + eps)
    sep = (2 * stats[2]).exp() - 1e-6
    return torch.stack(
        [
            (stats[0] - ref["mean"]).abs() / square.sqrt(),
            (var - ref["var"]).abs() / square,
            (sep - ref["sep"]).abs() / square,
        ]
    )


# float32 eps is 1.2e-7. Measured here: errors <= 3e-6 (1, 2 threads), so 3e-4 (2500 eps) leaves
# 100x for other kernels; another episode's statistics miss it on about 2/3 of the coordinates
# (the rest are channels every episode leaves alike, e.g. the final linear layer's outputs' bias)
_TOL = 3e-4
_STAT_NAMES = ("mean", "variance", "class separation")


def test_batched_stats_match_each_episode_alone(tiny_model, episodes):
    supports = [_support(tiny_model, ep) for ep in episodes[:3]]
    images = torch.cat([x for x, _ in supports])
    with torch.no_grad():
        features, stats = support_site_stats(
            tiny_model.backbone, tiny_model.layout, images, [y for _, y in supports]
        )
        plain = tiny_model.backbone(images)
    assert stats.shape == (3, len(STATS), tiny_model.layout.size)
    torch.testing.assert_close(features, plain)  # the hooks do not change the forward pass
    references = [_reference(tiny_model, x, y) for x, y in supports]
    for b, ref in enumerate(references):
        err = _moment_errors(stats[b], ref)
        assert err.max() < _TOL, f"episode {b}: {_STAT_NAMES[int(err.amax(1).argmax())]} off"
        # the tolerance still tells episodes apart: another episode's statistics fail it
        other = _moment_errors(stats[b], references[(b + 1) % len(references)])
        assert (other > _TOL).any(0).float().mean() > 0.5, (
            "tolerance too loose to catch a wrong episode"
        )
    for chunk in (1, 7, len(images)):  # chunked passes (7 does not divide N) give the same
        with torch.no_grad():
            f, st = support_site_stats(
                tiny_model.backbone, tiny_model.layout, images, [y for _, y in supports], chunk
            )
        # convolutions over other batch sizes round differently: compare features on their scale
        assert ((f - features).abs().max() / features.abs().max()) < _TOL, f"chunk {chunk}"
        for b, ref in enumerate(references):
            assert _moment_errors(st[b], ref).max() < _TOL, f"chunk {chunk}, episode {b}"


def test_the_compiled_pass_gives_every_episode_its_own_statistics(tiny_model, episodes):
    # the compiled pass traces the hooks into its graph once and reuses it (drift/compiled.py):
    # each later episode must still get its own true statistics (one shape: one compile)
    layout, backbone = tiny_model.layout, tiny_model.backbone
    with torch.no_grad():
        for b, ep in enumerate(episodes[:3]):
            x, y = _support(tiny_model, ep)
            f, st = support_site_stats(backbone, layout, x, [y], compiled=True)
            assert _moment_errors(st[0], _reference(tiny_model, x, y)).max() < _TOL, f"episode {b}"
            plain = backbone(x)
            assert ((f - plain).abs().max() / plain.abs().max()) < _TOL, f"episode {b}"


def test_stats_ignore_image_and_class_order_but_see_a_contrast_shift(tiny_model, episodes):
    x, y = _support(tiny_model, episodes[0])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    relabel = torch.randperm(int(y.max()) + 1, generator=torch.Generator().manual_seed(1))
    layout = tiny_model.layout
    with torch.no_grad():
        base = support_site_stats(tiny_model.backbone, layout, x, [y])[1]
        permuted = support_site_stats(tiny_model.backbone, layout, x[order], [relabel[y][order]])[1]
        faded = support_site_stats(tiny_model.backbone, layout, 0.3 * x + 1.0, [y])[1]
    ref = _reference(tiny_model, x, y)  # both orders give the true statistics of the episode
    assert _moment_errors(base[0], ref).max() < _TOL
    assert _moment_errors(permuted[0], ref).max() < _TOL
    assert (faded - base)[0, :2].abs().mean() > 0.1, "a contrast shift must move mean and std"


def test_stats_conditioned_drift_depends_on_them_and_round_trips(tmp_path, tiny_model, episodes):
    cfg = DriftConfig(interpolant="linear")  # site_stats is on by default
    net = DriftNet(tiny_model.layout, cfg, tiny_model.backbone, tiny_model.feature_dim, 5.0).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        supports = [_support(tiny_model, ep) for ep in episodes]
        stats = torch.cat([net.support_inputs(x, [y])[1] for x, y in supports])  # [4, K, P]
        net.fit_normalizer(torch.randn(20, net.layout.size, generator=g), stats=stats)
        for p in net.local.parameters():  # the untrained local head is zero: make it count
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        task = net.encode_tasks(supports[:1])
        theta, t = torch.randn(1, net.layout.size, generator=g), torch.tensor([2.0])
        v = net(theta, t, task)
        task.stats = task.stats + 1.0
        assert (net(theta, t, task) - v).abs().max() > 1e-4, "the output must use the statistics"
    save_drift(net, tmp_path)
    loaded = load_drift(tmp_path, tiny_model.backbone, tiny_model.feature_dim).eval()
    torch.testing.assert_close(loaded.stat_scale, net.stat_scale)
    with torch.no_grad():
        again = loaded(theta, t, loaded.encode_tasks(supports[:1]))
    torch.testing.assert_close(again, v)
    # far outside the fitted range (an unseen shift) the task's statistics stay bounded; inside
    # it they stay close to the plain normalised values
    x, y = supports[0]
    with torch.no_grad():
        features, raw = net.support_inputs(x, [y])
        wild = net.make_task(features, [y], raw * 1e4).stats
        tame = net.make_task(features, [y], raw).stats
    assert 2.9 < wild.abs().max() <= 3.0  # tanh rounds to 1 in float32 far out
    plain = (raw - net.stat_offset) / net.stat_scale
    inside = plain.abs() < 1
    torch.testing.assert_close(tame[inside], plain[inside], rtol=0.05, atol=0.05)


def test_site_stats_need_the_target_encoder():
    with pytest.raises(UserError, match="site_stats"):
        DriftConfig(encoder="test_resnet").validate()


def test_task_stats_put_a_per_layer_summary_of_the_statistics_into_the_task_embedding(
    tmp_path, tiny_model, episodes
):
    cfg = DriftConfig(interpolant="linear", task_stats=True)
    net = DriftNet(tiny_model.layout, cfg, tiny_model.backbone, tiny_model.feature_dim, 5.0).eval()
    x, y = _support(tiny_model, episodes[0])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        features, raw = net.support_inputs(x, [y])
        # zero-initialised: the untrained embedding is the prototype pooling's alone
        torch.testing.assert_close(
            net.make_task(features, [y], raw).embedding, net.pool(features, [y])
        )
        for p in net.stat_pool.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        base = net.make_task(features, [y], raw).embedding
        # the same images with one layer's statistics moved (a shift at that depth): the
        # embedding moves; a plain drift's embedding cannot see it (negative control)
        first = tiny_model.layout.entries[0]
        moved = raw.clone()
        moved[:, :, first.offset : first.offset + first.numel] += 1.0
        assert (net.make_task(features, [y], moved).embedding - base).abs().max() > 1e-3
        plain = DriftNet(tiny_model.layout, DriftConfig(interpolant="linear"), tiny_model.backbone,
                         tiny_model.feature_dim, 5.0).eval()  # fmt: skip
        torch.testing.assert_close(
            plain.make_task(features, [y], moved).embedding,
            plain.make_task(features, [y], raw).embedding,
        )
        # coordinates permuted within a layer: a per-layer summary does not change
        perm = raw.clone()
        block = slice(first.offset, first.offset + first.numel)
        perm[:, :, block] = raw[:, :, block].flip(-1)
        torch.testing.assert_close(net.make_task(features, [y], perm).embedding, base)
    save_drift(net, tmp_path)
    loaded = load_drift(tmp_path, tiny_model.backbone, tiny_model.feature_dim).eval()
    assert loaded.cfg.task_stats
    with torch.no_grad():
        torch.testing.assert_close(loaded.make_task(features, [y], raw).embedding, base)


def test_task_stats_need_site_stats():
    with pytest.raises(UserError, match="task_stats"):
        DriftConfig(site_stats=False, task_stats=True).validate()
