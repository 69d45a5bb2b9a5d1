"""Hard-concrete gates: eval gates, the closed forms against sampling, and the sparsity target."""

import pytest
import torch

from hyperflow.smat.gates import HardConcreteGates


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (20x slower on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gates(experts=3, size=500, seed=0, **kw) -> HardConcreteGates:
    torch.manual_seed(seed)
    return HardConcreteGates(experts, size, **kw)


def test_eval_gates_are_deterministic_and_zero_or_in_unit_interval():
    g = _gates(init_density=0.4).eval()
    with torch.no_grad():
        g.log_alpha.add_(torch.randn_like(g.log_alpha) * 3)  # spread: some saturate, some not
    a, b = g(), g(torch.Generator().manual_seed(5))  # a generator must not matter at eval
    assert torch.equal(a, b), "eval gates changed between calls"
    nonzero = a[a != 0]
    assert bool(((nonzero > 0) & (nonzero <= 1)).all()), "eval gate outside {0} u (0, 1]"
    assert 0 < nonzero.numel() < a.numel(), "expected both zero and non-zero eval gates"
    # the eval non-zero share is the expected L0 share, to one coordinate
    P = a.shape[1]
    assert torch.allclose(g.density(), g.expected_density().detach(), atol=1 / P + 1e-6)


def test_training_samples_are_reparameterised_and_match_the_closed_forms():
    g = _gates(experts=2, size=200, init_density=0.5).train()
    gen = torch.Generator().manual_seed(1)
    z = g(gen)
    assert z.shape == (2, 200) and bool(((z >= 0) & (z <= 1)).all())
    assert bool((z == 0).any()) and bool((z == 1).any()), "hard-concrete should hit 0 and 1"
    z.sum().backward()
    assert g.log_alpha.grad is not None and g.log_alpha.grad.abs().sum() > 0
    with torch.no_grad():
        draws = torch.stack([g.sample(gen) for _ in range(2000)])  # [S, M, P]
    # Monte Carlo vs closed forms: P(z != 0) and E[z] (quadrature)
    assert (draws.ne(0).float().mean(0) - g.nonzero_prob()).abs().max() < 0.05
    assert (draws.mean(0) - g.mean_gate()).abs().max() < 0.03


def _train_toy(tau: float, penalty: bool, steps: int = 300) -> HardConcreteGates:
    """Gates z over a learnt dense vector w fit to targets y: the task loss pulls every gate on,
    so only the penalty holds the share at tau."""
    torch.manual_seed(0)
    M, P = 4, 1000
    g = HardConcreteGates(M, P, init_density=tau)
    w = torch.nn.Parameter(torch.zeros(P))
    y = torch.randn(M, P)  # [M, P] one regression target per expert
    opt = torch.optim.Adam([{"params": [g.log_alpha], "lr": 0.05}, {"params": [w], "lr": 0.05}])
    gen = torch.Generator().manual_seed(1)
    g.train()
    for _ in range(steps):
        loss = (g(gen) * w - y).pow(2).mean()
        if penalty:
            loss = loss + g.penalty(tau)
        opt.zero_grad()
        loss.backward()
        opt.step()
        g.clip_()
    return g.eval()


def test_penalty_brings_share_of_nonzero_eval_gates_to_tau(one_thread):
    tau = 0.3
    g = _train_toy(tau, penalty=True)
    share = (g() != 0).float().mean(dim=1)  # [M] eval-mode share per expert
    assert (share - tau).abs().max() <= 0.02, f"share of non-zero gates {share.tolist()}"
    # control: without the penalty the same task drives the share well above tau
    free = (_train_toy(tau, penalty=False)() != 0).float().mean(dim=1)
    assert bool((free > tau + 0.1).all()), f"toy task does not pull gates on: {free.tolist()}"


def test_multiplier_moves_only_in_training_with_grad():
    g = _gates(init_density=0.8)
    g.eval()
    g.penalty(0.2)
    assert torch.equal(g.multiplier, torch.zeros(3)), "eval mode must not update the multiplier"
    g.train()
    with torch.no_grad():
        g.penalty(0.2)
    assert torch.equal(g.multiplier, torch.zeros(3)), "no_grad must not update the multiplier"
    g.penalty(0.2)
    assert bool((g.multiplier > 0).all()), "too dense: the multiplier should rise"
