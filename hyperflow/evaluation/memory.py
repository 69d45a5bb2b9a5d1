"""Peak working memory of one adaptation, measured the same way for every method.

The figure is the tensor allocator's high-water mark during the call, above what was allocated
before it: on CUDA torch.cuda.max_memory_allocated after reset_peak_memory_stats; on the CPU the
same count from the profiler's allocation events (torch.profiler with profile_memory: every
allocation and free through PyTorch's CPU allocator, in order; the running sum's maximum is the
peak). It counts tensors the call allocated (activations, gradients, optimizer state, the copies a
kernel makes of its weights), not the Python heap, and it is exact: the same call reads the same
bytes every time, on any process, so a worker can measure right after it adapted.

It replaces a resident-set reading (VmHWM after clear_refs), which saw pages, not tensors: a call
whose blocks reused pages the heap already held read 0, and the same compiled adaptation read 0,
0.59 or 0.72 MB in one process where this count reads 1.68 MB each time.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def peak_memory_bytes(fn: Callable[[], object], device: str = "cpu") -> int:
    """Bytes of tensor memory fn() had allocated at its peak beyond what was live before.

    fn runs twice, measured the same way both times, and the second call counts: one-time set-up
    (a compile, a kernel's first call, what a compiled function sets up the first time it runs
    under the profiler: 0.2 MB for the quickstart's compiled adaptation) is not working memory."""
    _measure(fn, device)
    return _measure(fn, device)


def _measure(fn: Callable[[], object], device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _no_stderr():  # Kineto logs two lines to stderr per profile, whatever its log level
        prof.start()
    try:
        fn()
    finally:
        with _no_stderr():
            prof.stop()
    return _peak_of(prof)


@contextlib.contextmanager
def _no_stderr():
    # file descriptor 2 itself: the lines come from C++, not through sys.stderr
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _peak_of(prof: profile) -> int:
    # "[memory]" events: +bytes at an allocation, -bytes at a free. Frees of blocks allocated
    # before the profile started have no event (the allocator never saw their size), so the
    # running sum counts only what fn() allocated.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak
