"""The test-time drift (prepare / time_rows / velocity) computes what DriftNet.forward computes.

Compared in float64 on a small net whose every weight and buffer is random and non-zero (the
zero-initialised gates and local head would otherwise hide their terms): the two differ only in
op order, so they agree to ~1e-15 relative; a missing or misplaced term is O(1) off.
"""

from __future__ import annotations

import pytest
import torch

from hyperflow.drift import DriftConfig, DriftNet, Task, compiled
from hyperflow.drift.compiled import BLOCK
from hyperflow.drift.compiled import euler as compiled_euler
from hyperflow.solvers import integrate, time_grid

H = 4.0  # horizon
RTOL = 1e-10  # float64: op-order rounding ~1e-15 relative to the velocities' size


def _random_net(layout, encoder, site_stats: bool) -> DriftNet:
    torch.manual_seed(1)
    dims = {"layer_dim": 8, "width": 16, "depth": 2, "task_dim": 8}
    cfg = DriftConfig("small", "target", "linear", site_stats, **dims)
    net = DriftNet(layout, cfg, encoder, 16, H)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn_like(p))
        for name, b in net.named_buffers():
            if b.is_floating_point() and name != "freqs":  # offsets and positive scales
                b.copy_(torch.rand_like(b) + 0.5)
    return net.double().eval()


def _task(net: DriftNet, B: int) -> Task:
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(B, net.task_dim, generator=g, dtype=torch.float64)
    if not net.n_stats:
        return Task(emb)
    return Task(emb, torch.randn(B, net.n_stats, net.layout.size, generator=g, dtype=torch.float64))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a - b).abs() <= RTOL * b.abs().max()).all())


# velocity runs over chunks of c coordinates that share a layer (prepared._chunk): c = 1 for the
# conftest layout (a layer of 5), c = 8 here, where every size is a multiple of 8
CHUNKED = [(8,), (16,), (2, 4), (8,)]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("site_stats", [True, False])
def test_velocity_equals_forward(layout, layout_factory, encoder, site_stats, chunked):
    layout = layout_factory(CHUNKED) if chunked else layout
    net = _random_net(layout, encoder, site_stats)
    task = _task(net, 3)
    theta = torch.randn(3, layout.size, dtype=torch.float64)
    t = torch.tensor([0.0, 1.3, 3.9], dtype=torch.float64)  # one time per episode
    with torch.no_grad():
        prepared = net.prepare(task)
        ref = net(theta, t, task)
        wrong = net.velocity(theta, prepared, net.time_rows(prepared, t[:1].expand(3)))
        fast = net.velocity(theta, prepared, net.time_rows(prepared, t))  # row b: t[b]
    assert _close(fast, ref)
    assert ref.abs().max() > 1  # O(1) velocities: the tolerance tells terms apart
    assert not _close(wrong, ref)  # ... and times: every episode at t[0] is caught


def test_the_weight_only_terms_follow_every_weight_change(layout, encoder):
    # prepare caches what depends on weights alone across episodes; an optimizer step, a new
    # normaliser or loaded weights must not be served from the cache
    net = _random_net(layout, encoder, True)
    task, theta = _task(net, 2), torch.randn(2, layout.size, dtype=torch.float64)
    t = torch.tensor([0.5, 2.0], dtype=torch.float64)

    def fast():
        prepared = net.prepare(task)
        return net.velocity(theta, prepared, net.time_rows(prepared, t))

    with torch.no_grad():
        before = fast()
        assert fast() is not before and torch.equal(fast(), before)  # a cache hit, same values
        net.out.weight[f"n{net.groups.group_sizes[0]}"].mul_(2)  # a trunk weight, in place
        net.fit_normalizer(torch.randn(8, layout.size, dtype=torch.float64))  # the buffers
        after, ref = fast(), net(theta, t, task)
    assert _close(after, ref)
    assert not _close(before, ref)  # the change mattered: stale terms would be caught


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_an_integrated_path_equals_one_of_forward(layout, encoder, solver):
    # as adapted_theta integrates: grid times from one batch of rows, a stage time off the grid
    # (midpoint) from its own; the reference calls forward at every step through torchdiffeq
    net = _random_net(layout, encoder, True)
    task, steps = _task(net, 1), 6
    theta0 = torch.randn(1, layout.size, dtype=torch.float64)
    prepared = net.prepare(task)
    grid = time_grid(H, steps, theta0)
    rows = net.time_rows(prepared, grid)
    row_of = {float(t): k for k, t in enumerate(grid)}
    used = []

    def fast(t, theta):
        k = row_of.get(float(t))
        used.append(k is not None)
        here = rows.row(k) if k is not None else net.time_rows(prepared, t.reshape(1))
        return net.velocity(theta, prepared, here)

    def ref(t, theta):
        return net(theta, t.reshape(1), task)

    with torch.no_grad():
        out = integrate(fast, theta0, H, steps, solver)
        expected = integrate(ref, theta0, H, steps, solver, use_torchdiffeq=True)
    assert _close(out, expected)
    assert sum(used) == steps  # every grid time came from the batched rows
    assert (out - theta0).abs().max() > 1  # the path moved: the comparison is not trivial


@pytest.mark.parametrize("steps", [2 * BLOCK, BLOCK + 2])  # whole blocks; a block and a remainder
def test_compiled_euler_blocks_follow_forward(layout, encoder, steps):
    # hyperflow/drift/compiled.py: fused kernels change op order only (float64: ~1e-12 off); a
    # dropped or repeated step, or a step at the wrong time, is O(1) off. (Chunks of c > 1
    # coordinates are velocity's, compiled or not: test_velocity_equals_forward)
    net = _random_net(layout, encoder, True)
    task = _task(net, 1)
    theta0 = torch.randn(1, layout.size, dtype=torch.float64)
    with torch.no_grad():
        prepared = net.prepare(task)
        rows = net.time_rows(prepared, time_grid(H, steps, theta0)[:-1])
        out = compiled_euler(net, theta0, prepared, rows, H / steps)
        expected = integrate(lambda t, th: net(th, t.reshape(1), task), theta0, H, steps)
        # a negative control: the same steps with the time rows in reverse order
        rows.cond, rows.films = rows.cond.flip(0), [f.flip(0) for f in rows.films]
        reversed_times = compiled_euler(net, theta0, prepared, rows, H / steps)
    scale = expected.abs().max()
    assert (out - expected).abs().max() <= 1e-9 * scale
    assert (reversed_times - expected).abs().max() > 1e-3 * scale
    assert (out - theta0).abs().max() > 1  # the path moved: the comparison is not trivial


def test_compile_failure_falls_back_to_eager_steps(layout, encoder, monkeypatch):
    # a machine without a C++ compiler: torch.compile's first call raises; the steps still run
    def no_compiler(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler")

        return fail

    net = _random_net(layout, encoder, True)
    task, steps = _task(net, 1), BLOCK
    theta0 = torch.randn(1, layout.size, dtype=torch.float64)
    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(compiled, "_failed", [])
    compiled._compiled_block.cache_clear()
    try:
        with torch.no_grad():
            prepared = net.prepare(task)
            rows = net.time_rows(prepared, time_grid(H, steps, theta0)[:-1])
            with pytest.warns(UserWarning, match="no C..? compiler"):
                out = compiled_euler(net, theta0, prepared, rows, H / steps)
            again = compiled_euler(net, theta0, prepared, rows, H / steps)  # no second try
            expected = integrate(lambda t, th: net(th, t.reshape(1), task), theta0, H, steps)
    finally:
        compiled._compiled_block.cache_clear()  # later tests compile again
    assert _close(out, expected) and torch.equal(out, again)


def test_terms_cached_without_gradients_are_not_served_with_them(layout, encoder):
    # a cache filled under no_grad holds tensors without a graph: with gradients on, prepare
    # must rebuild them, or the per-layer maps would silently get no gradient
    net = _random_net(layout, encoder, True)
    task, theta = _task(net, 1), torch.randn(1, layout.size, dtype=torch.float64)
    t = torch.tensor([1.0], dtype=torch.float64)
    with torch.no_grad():
        net.prepare(task)
    prepared = net.prepare(task)
    net.velocity(theta, prepared, net.time_rows(prepared, t)).sum().backward()
    grads = [w.grad for w in net.out.weight.values()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
