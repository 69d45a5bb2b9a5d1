import copy

import pytest
import torch
from torch import nn

from hyperflow.drift import DRIFT_SIZES, DriftConfig, DriftNet, Task, timm_encoder
from hyperflow.drift.layers import LayerGroups, LayerwiseIn, LayerwiseOut
from hyperflow.errors import UserError

H = 4.0  # horizon
F = 16  # feature size given to nets whose encoder is not used


def drift_params(net: DriftNet) -> int:
    return sum(p.numel() for n, p in net.named_parameters() if not n.startswith("encoder."))


_U32 = 2.0**-24  # float32 unit roundoff


def _affine64(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """x [B, n] @ w [n, m] + b [m] in float64, i.e. exactly for float32 inputs, and a bound on
    the rounding error of any float32 evaluation of it: gamma_{n+1} (|x| @ |w| + |b|). The bound
    holds for every summation order, blocking and use of FMA (Higham, Accuracy and Stability of
    Numerical Algorithms, 3.1), so it does not depend on which kernels the CPU's BLAS picks for a
    batched einsum and a single matmul."""
    x, w, b = x.detach().double(), w.detach().double(), b.detach().double()
    g = (w.shape[0] + 1) * _U32
    return x @ w + b, g / (1 - g) * (x.abs() @ w.abs() + b.abs())


def test_layerwise_maps_match_a_per_layer_loop(layout):
    groups = LayerGroups(layout)
    x = torch.randn(3, layout.size)
    assert torch.equal(groups.merge(groups.split(x)), x)
    inp, out = LayerwiseIn(groups, 5), LayerwiseOut(groups, 5)
    with torch.no_grad():
        tokens = inp(x)  # [3, L, 5] in token order
        y = out(tokens)
    assert tokens.shape == (3, len(layout.entries), 5)
    for k, layer in enumerate(groups.token_layer.tolist()):
        e = layout.entries[layer]
        ids, n = next((ids, n) for ids, n in groups.members() if layer in ids)
        j = ids.index(layer)
        x_l = x[:, e.offset : e.offset + e.numel]
        w_in, b_in = inp.weight[f"n{n}"], inp.bias[f"n{n}"]
        ref, bound = _affine64(x_l, w_in[j], b_in[j])
        assert ((tokens[:, k] - ref).abs() <= bound).all(), f"token {k} (layer {layer})"
        ref_out, bound_out = _affine64(tokens[:, k], out.weight[f"n{n}"][j], out.bias[f"n{n}"][j])
        y_l = y[:, e.offset : e.offset + e.numel]
        assert ((y_l - ref_out).abs() <= bound_out).all(), f"output of layer {layer}"
        if len(ids) > 1:  # the bound still tells apart the layers of a size group (~1e-6 vs ~1)
            wrong, _ = _affine64(x_l, w_in[(j + 1) % len(ids)], b_in[(j + 1) % len(ids)])
            assert ((tokens[:, k] - wrong).abs() > bound).any(), f"token {k}: wrong weights pass"


@pytest.mark.parametrize("size", sorted(DRIFT_SIZES))
def test_forward_shapes_any_way_and_shot(size, layout, encoder, support_factory):
    net = DriftNet(
        layout, DriftConfig(size=size, site_stats=False), encoder, encoder.feature_dim, H
    )
    g = torch.Generator().manual_seed(1)
    ways = [2, 5, 10, 3]
    supports = [
        support_factory(w, torch.randint(1, 5, (w,), generator=g).tolist(), seed=i)
        for i, w in enumerate(ways)
    ]
    task = net.encode_tasks(supports)
    assert task.embedding.shape == (4, DRIFT_SIZES[size].task_dim) and task.stats is None
    theta = torch.randn(4, layout.size)
    v = net(theta, torch.rand(4) * H, task)
    assert v.shape == (4, layout.size) and torch.isfinite(v).all()
    # a scalar t (as ODE solvers pass it) means the same time for every row
    at_scalar = net(theta, torch.tensor(1.5), task)
    torch.testing.assert_close(at_scalar, net(theta, torch.full((4,), 1.5), task))


def _embedding64(net: DriftNet, supports) -> torch.Tensor:
    """The task embeddings encode_tasks computes (encoder over all images, then the prototype
    pooling), computed in float64 by a copy of net: the true values float32 approximates."""
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        images = torch.cat([x for x, _ in supports]).double()
        return net64.pool(net64.encoder(images), [y for _, y in supports])


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


# float32 eps is 1.2e-7; measured here: embeddings within 1.7e-7 of the float64 ones (in units of
# their largest entry), so 1e-4 leaves ~600x for other CPUs' kernels, while a changed support or a
# broken image-label pairing is off by 0.4 and 0.09
_EMBED_TOL = 1e-4


def test_encode_tasks_is_permutation_invariant(layout, encoder, support_factory):
    net = DriftNet(layout, DriftConfig(site_stats=False), encoder, encoder.feature_dim, H)
    x, y = support_factory(4, [1, 3, 2, 4], seed=0)
    other = support_factory(3, [2, 2, 2], seed=1)
    relabel = torch.tensor([2, 0, 3, 1])  # class order
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # image order
    shuffled = (x[order], relabel[y][order])
    # exactly invariant: in float64 the reordered sums differ by rounding of ~1e-16
    ref = _embedding64(net, [(x, y), other])
    assert _relative_error(_embedding64(net, [shuffled, other]), ref) < 1e-12
    # encode_tasks runs in float32, where image and class order change the rounding of the
    # prototype sums and of the encoder's matmul rows by amounts that depend on the CPU's
    # kernels: both orders must give the true embedding up to float32 error
    base = net.encode_tasks([(x, y), other]).embedding
    permuted = net.encode_tasks([shuffled, other]).embedding
    assert _relative_error(base, ref) < _EMBED_TOL
    assert _relative_error(permuted, ref) < _EMBED_TOL
    # ...while the support content and which label goes with which image do matter
    changed = net.encode_tasks([(x + 1.0, y), other]).embedding
    unpaired = net.encode_tasks([(x[order], relabel[y]), other]).embedding  # labels left behind
    assert _relative_error(changed[:1], ref[:1]) > 100 * _EMBED_TOL
    assert _relative_error(unpaired[:1], ref[:1]) > 100 * _EMBED_TOL
    # the other episode's rows meet the same kernels at the same batch positions: unchanged
    torch.testing.assert_close(changed[1], base[1], rtol=1e-5, atol=1e-5)


def test_encode_tasks_runs_the_encoder_once(layout, encoder, support_factory):
    net = DriftNet(layout, DriftConfig(site_stats=False), encoder, encoder.feature_dim, H)
    calls = []
    encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    net.encode_tasks([support_factory(2, [1, 1], 0), support_factory(5, [3] * 5, 1)])
    assert calls == [17]


def test_target_encoder_stays_frozen(layout, encoder, support_factory):
    net = DriftNet(
        layout, DriftConfig(encoder="target", site_stats=False), encoder, encoder.feature_dim, H
    ).train()
    assert not any(p.requires_grad for p in encoder.parameters())
    assert net.training and not encoder.training, "train() must keep the target in eval mode"
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    task = net.encode_tasks([support_factory(3, [2, 2, 2], 0)])
    net(torch.randn(1, layout.size), torch.rand(1), task).pow(2).sum().backward()
    opt.step()
    for k, v in encoder.state_dict().items():  # weights and BatchNorm statistics untouched
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in encoder.parameters())


def test_timm_encoder_is_trained(layout, support_factory):
    encoder, dim = timm_encoder("test_resnet", in_chans=1)
    net = DriftNet(
        layout, DriftConfig(encoder="test_resnet", site_stats=False), encoder, dim, H
    ).train()
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    task = net.encode_tasks([support_factory(3, [2, 2, 2], 0)])
    net(torch.randn(1, layout.size), torch.rand(1), task).pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_params_grow_linearly_in_p(layout_factory):
    def count(scale: int, layers: int = 6) -> int:
        lay = layout_factory([(64 * scale,), (128 * scale,)] * (layers // 2))
        return drift_params(DriftNet(lay, DriftConfig(site_stats=False), nn.Identity(), F, H))

    c1, c2, c4 = count(1), count(2), count(4)
    assert c4 - c2 == 2 * (c2 - c1), "same layers, P doubled: params must be affine in P"
    assert c4 < 2.5 * c2 < 6.25 * c1, "no P^2 term"
    # the small size stays well under 1M parameters at P ~ 5000
    p5000 = drift_params(
        DriftNet(
            layout_factory([(500,)] * 10), DriftConfig(site_stats=False), nn.Identity(), 512, H
        )
    )
    assert p5000 < 1_000_000, p5000


def test_normalizer_sets_layer_scales(layout):
    net = DriftNet(layout, DriftConfig(site_stats=False), nn.Identity(), F, H)
    per_layer = torch.tensor([1e-3, 1.0, 50.0, 0.2, 0.0])  # last layer never moves
    scale = per_layer[layout.layer_index()]
    velocities = torch.randn(4000, layout.size) * scale
    thetas = 3.0 + torch.randn(4000, layout.size) * 10 * scale
    task, theta, t = Task(torch.randn(2, 64)), torch.randn(2, layout.size), torch.rand(2)
    before = net(theta, t, task)
    net.fit_normalizer(velocities, thetas)
    torch.testing.assert_close(net.velocity_scale[:4], per_layer[:4], rtol=0.05, atol=0)
    torch.testing.assert_close(net.theta_scale[:4], 10 * per_layer[:4], rtol=0.05, atol=0)
    assert 0 < net.velocity_scale[4] < 1e-6 and net.theta_scale[4] == net.velocity_scale[4]
    assert bool(((net.theta_offset - 3.0).abs() <= 0.1 * 10 * scale + 1e-6).all())
    # outputs come out in each layer's own units
    v = net(net.theta_offset.expand(2, -1), t, task)
    ratio = v.abs().mean(0) / before.abs().mean(0).clamp_min(1e-12)
    e = layout.entries[2]
    assert ratio[e.offset : e.offset + e.numel].mean() > 10


@pytest.mark.parametrize("field,value", [("size", "huge"), ("interpolant", "spline")])
def test_bad_config_is_a_user_error(layout, field, value):
    with pytest.raises(UserError, match=repr(value)):
        DriftNet(layout, DriftConfig(**{field: value}), nn.Identity(), F, H)
