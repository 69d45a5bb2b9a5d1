"""SMAT model: the merge formula, the router's invariances, the zero-shot merge."""

import pytest
import torch

from hyperflow.bias import get_theta
from hyperflow.smat.model import Smat, SmatConfig


def _smat(tiny_model, experts=4, seed=0) -> Smat:
    torch.manual_seed(seed)
    smat = Smat(
        SmatConfig(experts=experts, tau=0.3, width=16),
        tiny_model.layout.size,
        tiny_model.feature_dim,
    )
    with torch.no_grad():  # a trained-looking SMAT: non-zero delta, a router that discriminates
        smat.theta_delta.normal_(0, 0.1)
        smat.router.rho[-1].weight.normal_(0, 1.0)
    return smat


def _support_features(model, episode) -> torch.Tensor:
    with torch.no_grad():
        return model.features(model.preprocess(episode.support_x))  # [N, F]


def test_merged_theta_matches_plain_loop_over_experts(tiny_model, episodes):
    smat = _smat(tiny_model).train()
    theta_pre = get_theta(tiny_model.backbone, tiny_model.layout)  # [P]
    z = smat.gates(torch.Generator().manual_seed(0))  # [M, P] sampled, some exactly 0 or 1
    feats = torch.cat([_support_features(tiny_model, ep) for ep in episodes])
    alpha = smat.merging_weights(feats, [ep.support_y for ep in episodes])  # [B, M]
    assert alpha.shape == (len(episodes), 4)
    assert torch.allclose(alpha.sum(1), torch.ones(len(episodes)))
    merged = smat.merged_theta(theta_pre, alpha, z)
    for b in range(len(episodes)):
        expected = theta_pre.clone()
        for m in range(4):
            expected = expected + alpha[b, m] * (z[m] * smat.theta_delta)
        assert torch.allclose(merged[b], expected, atol=1e-6), b
    # forward = the same merge, with eval gates in eval mode
    smat.eval()
    out = smat(theta_pre, feats, [ep.support_y for ep in episodes])
    assert torch.allclose(out, smat.merged_theta(theta_pre, alpha, smat.gates.deterministic()))


def test_merged_theta_rejects_wrong_shapes(tiny_model):
    smat = _smat(tiny_model)
    P = smat.size
    with pytest.raises(AssertionError, match="z"):
        smat.merged_theta(torch.zeros(P), torch.ones(1, 4) / 4, torch.zeros(3, P))
    with pytest.raises(AssertionError, match="alpha"):
        smat.merged_theta(torch.zeros(P), torch.ones(4), torch.zeros(4, P))


def test_router_ignores_image_order_and_class_labels(tiny_model, episodes):
    smat = _smat(tiny_model)
    ep = episodes[0]
    feats, y = _support_features(tiny_model, ep), ep.support_y
    ref = smat.merging_weights(feats, [y])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    shuffled = smat.merging_weights(feats[perm], [y[perm]])
    relabel = torch.tensor([3, 0, 4, 1, 2])[y]  # class c is called relabel[c]
    renamed = smat.merging_weights(feats, [relabel])
    assert torch.allclose(ref, shuffled, atol=1e-6)
    assert torch.allclose(ref, renamed, atol=1e-6)
    other = smat.merging_weights(
        _support_features(tiny_model, episodes[1]), [episodes[1].support_y]
    )
    assert not torch.allclose(ref, other, atol=1e-4), "router ignores the support set"


def test_adapted_theta_is_the_eval_merge(tiny_model, episodes):
    smat = _smat(tiny_model).train()
    ep = episodes[0]
    theta = smat.adapted_theta(tiny_model, ep.support_x, ep.support_y)
    feats = _support_features(tiny_model, ep)
    alpha = smat.merging_weights(feats, [ep.support_y])
    theta_pre = get_theta(tiny_model.backbone, tiny_model.layout)
    expected = smat.merged_theta(theta_pre, alpha, smat.gates.deterministic())[0]
    assert theta.shape == (smat.size,) and torch.allclose(theta, expected, atol=1e-6)
    assert torch.equal(theta, smat.adapted_theta(tiny_model, ep.support_x, ep.support_y))


def test_param_groups_cover_every_parameter_once(tiny_model):
    smat = _smat(tiny_model)
    groups = smat.param_groups(lr=1e-3, gate_lr=1e-2)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in smat.parameters())
