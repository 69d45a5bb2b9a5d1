import copy

import pytest
import torch

from hyperflow.adapt.methods import GRADIENT_METHODS, accuracy, adapt, classify, predict
from hyperflow.adapt.simulate import initial_theta, simulate, simulate_loop
from hyperflow.bias import get_theta


def test_batched_matches_per_episode_loop(tiny_model, episodes):
    # float64: Adam divides by sqrt(v), so float32 rounding on near-zero gradients (biases behind
    # dead ReLUs) would be amplified to lr-sized differences; in float64 the paths agree tightly
    model = copy.deepcopy(tiny_model).double()
    episodes = episodes[:3]
    n, steps = len(episodes), 3
    theta0 = initial_theta(model, n, 0.05, torch.Generator().manual_seed(0))
    lrs = torch.tensor([0.01, 0.05, 0.1], dtype=torch.float64)
    batched = simulate(model, episodes, theta0, lrs, steps, seeds=[10, 11, 12])
    assert batched.theta.shape == (n, steps + 1, model.layout.size)
    assert batched.loss.shape == (n, steps + 1)
    for i, ep in enumerate(episodes):
        ref = simulate_loop(model, ep, theta0[i], lrs[i].item(), steps, seed=10 + i)
        assert torch.allclose(ref.theta[0], batched.theta[i], atol=1e-9), i
        assert torch.allclose(ref.loss[0], batched.loss[i], atol=1e-9), i
    assert (batched.theta[:, -1] - batched.theta[:, 0]).abs().max() > 1e-3, "theta never moved"


def test_mixed_support_sizes_keep_order(tiny_model, make_episode):
    model = copy.deepcopy(tiny_model).double()
    eps = [make_episode(0, way=5, shot=2), make_episode(1, way=3, shot=4), make_episode(2, 5, 2)]
    theta0 = initial_theta(model, 3, 0.0, torch.Generator())
    lrs = torch.full((3,), 0.05, dtype=torch.float64)
    out = simulate(model, eps, theta0, lrs, 3, [0, 1, 2])
    for i, ep in enumerate(eps):
        ref = simulate_loop(model, ep, theta0[i], 0.05, 3, i)
        assert torch.allclose(ref.theta[0], out.theta[i], atol=1e-9), i


def test_simulate_leaves_model_untouched(tiny_model, episodes):
    before = get_theta(tiny_model.backbone, tiny_model.layout)
    theta0 = initial_theta(tiny_model, 1, 0.0, torch.Generator())
    simulate(tiny_model, episodes[:1], theta0, torch.tensor([0.1]), 3, [0])
    assert torch.equal(before, get_theta(tiny_model.backbone, tiny_model.layout))


@pytest.mark.parametrize("method", sorted(GRADIENT_METHODS))
def test_every_method_returns_query_logits(tiny_model, episodes, method):
    ep = episodes[0]
    logits = predict(tiny_model, ep, adapt(method, tiny_model, ep, lr=0.01, steps=3, seed=0))
    assert logits.shape == (ep.query_x.shape[0], ep.way)
    assert 0.0 <= accuracy(logits, ep.query_y) <= 1.0


def test_classify_with_own_theta_equals_direct(tiny_model, episodes):
    ep = episodes[0]
    theta = get_theta(tiny_model.backbone, tiny_model.layout)
    assert torch.allclose(classify(tiny_model, ep, theta), classify(tiny_model, ep), atol=1e-5)
