"""torch.compile for adaptation: the support pass through the encoder, and Euler steps of a
prepared drift, `BLOCK` steps per compiled call.

The support pass (`site_pass`): the target backbone compiled once per process with the site
statistics hooks traced into its graph, so batch norms, activations, pooling and the hooks'
reductions fuse (~0.65x the eager forward's time on the quickstart target; one compile per
input shape).

A step of `velocity` is ~40 small ops on [Q, c, d] and [L, w] tensors (P = Q c ~ 1e3): on a CPU
each op's Python and dispatch overhead, not its arithmetic, sets the eager cost (~0.5 ms a step,
20 steps ~1.7x a support forward pass of the quickstart target). Inductor fuses a block of steps
into a few kernels, issued from a C++ wrapper. One compiled call runs BLOCK steps: one step per
call pays the guard checks at every step and measured barely faster than eager; longer blocks
compile for longer and once per step count (20: 2x the compile of 10 for 8% less time). Any
`steps` works: whole blocks compiled, the remainder eager.

The first call in a process compiles (~15-25 s on a 2-core CPU; inductor's on-disk cache makes
later processes ~2 s); a worker then reuses it for every episode, every drift network of the same
architecture and every multiple of BLOCK steps. Same function as the eager loop up to float
rounding of fused kernels (tests/hyperflow/drift/test_prepared.py).
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from hyperflow.drift.prepared import Prepared, TimeRows, velocity

BLOCK = 10


def site_pass(backbone: nn.Module) -> tuple[Callable[[Tensor], Tensor], dict]:
    """(backbone(x) torch.compile'd with the site-statistics hooks in its graph, the dict those
    hooks write to), built once per backbone. Call it only inside site_hooks writing to that dict
    (site_stats.support_site_stats does): dynamo does not guard on the hooks of submodules, so
    the graph traced at the first call, hooks and their dict, serves every later call."""
    if backbone not in _passes:
        _passes[backbone] = (torch.compile(backbone, dynamic=False), {})
    compiled, sink = _passes[backbone]

    def call(x: Tensor) -> Tensor:
        if not _failed:
            try:
                return compiled(x)
            except Exception as e:  # as _run_block: the same pass, eager
                warnings.warn(f"torch.compile failed ({e!r}); the pass runs eager", stacklevel=2)
                _failed.append(e)
        return backbone(x)

    return call, sink


_passes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def euler(net, theta: Tensor, prep: Prepared, rows: TimeRows, dt: float) -> Tensor:
    """theta [B, P] after len(rows.cond) Euler steps of size dt; row k holds step k's time terms."""
    steps = rows.cond.shape[0]
    h = torch.tensor(dt, dtype=theta.dtype)  # a tensor, not a float: no recompile per dt
    whole = steps - steps % BLOCK
    for s in range(0, whole, BLOCK):
        films = [f[s : s + BLOCK] for f in rows.films]
        theta = _run_block(net, theta, prep, rows.cond[s : s + BLOCK], films, h)
    for k in range(whole, steps):
        theta = theta + h * velocity(net, theta, prep, rows.row(k))
    return theta


def _block(net, theta: Tensor, prep: Prepared, cond: Tensor, films: list[Tensor], h: Tensor):
    # BLOCK Euler steps; cond [BLOCK, w], films per trunk block [BLOCK, 2w]
    for k in range(BLOCK):
        rows = TimeRows(cond[k : k + 1], [f[k : k + 1] for f in films])
        theta = theta + h * velocity(net, theta, prep, rows)
    return theta


def _run_block(*args) -> Tensor:
    if not _failed:
        try:
            return _compiled_block()(*args)
        except Exception as e:  # no C++ compiler, an unsupported platform: same steps, eager
            warnings.warn(f"torch.compile failed ({e!r}); Euler steps run eager", stacklevel=2)
            _failed.append(e)
    return _block(*args)


_failed: list[Exception] = []  # why compiling failed in this process, if it did: not retried


@functools.cache
def _compiled_block():
    # built on first use: importing the compiler stack costs ~1 s that eager users need not pay.
    # dynamic=False: shapes are fixed per target and drift size, and static shapes fuse best
    # cpp_wrapper: the graph's ~15 kernel and matmul calls a step are issued from C++, not Python
    # (quickstart cubic@20: 4.0 -> 3.1 ms; blocks of 10 instead of 5 then 2.6 ms, for ~5 s more of
    # one-off compile; blocks of 20 gave 2.4 ms and twice that compile)
    return torch.compile(_block, dynamic=False, options={"cpp_wrapper": True})
