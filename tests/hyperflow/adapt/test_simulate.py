import copy

import pytest
import torch
import torch.nn.functional as F

from hyperflow.adapt.augment import augment
from hyperflow.adapt.methods import GRADIENT_METHODS, Adapted, adapt, classify, predict
from hyperflow.adapt.simulate import initial_theta, simulate, simulate_loop, support_loss
from hyperflow.bias import get_theta
from hyperflow.model import cosine_logits, prototypes


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


def _support_logits(model, episode, seed: int, head=None) -> torch.Tensor:
    """Logits of the P>M>F loss the gradient methods descend: the augmented support copy against
    prototypes of the clean support (or a tuned head), on the first copy `seed` draws, which is
    the one their first step used."""
    clean = model.preprocess(episode.support_x)
    aug = augment(clean, torch.Generator().manual_seed(seed))
    if head is not None:
        return head[1] * cosine_logits(head[0], model.features(aug))
    feats = model.features(torch.cat([clean, aug]))
    n = clean.shape[0]
    return model.logits(feats[:n], episode.support_y, episode.way, feats[n:])


@torch.no_grad()
def _support_objective(model, episode, adapted, seed: int) -> float:
    if adapted.theta is not None:  # the simulator's own loss at theta, on that same copy
        return support_loss(model, episode, adapted.theta.unsqueeze(0), seed)[0].item()
    m = adapted.model if adapted.model is not None else model
    logits = _support_logits(m, episode, seed, adapted.head)
    return F.cross_entropy(logits, episode.support_y).item()


def _with_gradient(model, episode, seed: int) -> set[str]:
    """Backbone parameters (state_dict names) the support objective has a nonzero gradient for."""
    m = copy.deepcopy(model)
    for p in m.parameters():  # the session model may carry other tests' flags
        p.requires_grad_(True)
    F.cross_entropy(_support_logits(m, episode, seed), episode.support_y).backward()
    grads = {k: p.grad for k, p in m.backbone.named_parameters()}
    return {f"backbone.{k}" for k, g in grads.items() if g is not None and g.any()}


def _moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.mark.parametrize("method", sorted(GRADIENT_METHODS))
def test_every_method_tunes_what_it_should_and_lowers_its_support_loss(
    tiny_model, episodes, method
):
    # one Adam step of lr 1e-3: a descent step on the loss of the augmented copy it was taken
    # on, so that loss must drop (by 3e-4 or more on these episodes, float32 noise is ~1e-7);
    # the negative control is the same call with lr 0, which must adapt nothing
    ep, seed = episodes[0], 7
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    theta0 = get_theta(tiny_model.backbone, tiny_model.layout)
    adapted = adapt(method, tiny_model, ep, lr=1e-3, steps=1, seed=seed)
    control = adapt(method, tiny_model, ep, lr=0.0, steps=1, seed=seed)
    assert _moved(tiny_model.state_dict(), state) == set(), "adapting changed the target"
    direct = classify(tiny_model, ep)
    assert torch.allclose(predict(tiny_model, ep, control), direct, atol=1e-5)
    start = _support_objective(tiny_model, ep, Adapted(), seed)
    assert _support_objective(tiny_model, ep, control, seed) == pytest.approx(start, abs=1e-6)
    logits = predict(tiny_model, ep, adapted)
    assert logits.shape == (ep.query_x.shape[0], ep.way)
    produced = {k for k in ("theta", "head", "model") if getattr(adapted, k) is not None}
    assert produced == {"direct": set(), "head_tuning": {"head"}, "bias_tuning": {"theta"},
                        "full_tuning": {"model"}}[method]  # fmt: skip
    if method == "direct":
        assert torch.equal(logits, direct)
        return
    assert _support_objective(tiny_model, ep, adapted, seed) < start - 1e-5
    # the parameters it tunes that move: exactly those its first step's loss has a gradient for
    # (timm zero-inits each residual branch's last BatchNorm scale: the branch before it has none)
    live = _with_gradient(tiny_model, ep, seed)
    assert any(k.endswith(".weight") for k in live) and any(k.endswith(".bias") for k in live)
    if method == "bias_tuning":  # biases only: theta holds nothing else
        delta = tiny_model.layout.split(adapted.theta - theta0)
        assert {f"backbone.{k}" for k, d in delta.items() if d.any()} == {
            f"backbone.{k}" for k in tiny_model.layout.names
        } & live
        assert torch.equal(control.theta, theta0)
    elif method == "head_tuning":  # class weights leave the prototypes, the scale moves
        with torch.no_grad():
            feats = tiny_model.features(tiny_model.preprocess(ep.support_x))
        protos = prototypes(feats, ep.support_y, ep.way)
        assert not torch.allclose(adapted.head[0], protos, atol=1e-5)
        assert adapted.head[1] != tiny_model.logit_scale
        assert torch.allclose(control.head[0], protos, atol=1e-5)
    else:  # full tuning: backbone weights and biases; not the scale nor BatchNorm statistics
        assert _moved(adapted.model.state_dict(), state) == live
        assert _moved(control.model.state_dict(), state) == set()


def test_classify_with_own_theta_equals_direct(tiny_model, episodes):
    ep = episodes[0]
    theta = get_theta(tiny_model.backbone, tiny_model.layout)
    assert torch.allclose(classify(tiny_model, ep, theta), classify(tiny_model, ep), atol=1e-5)
