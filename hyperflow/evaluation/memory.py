"""Peak working memory of one adaptation, measured the same way for every method.

CPU (Linux): reset the process's resident high-water mark (write 5 to /proc/self/clear_refs), note
the resident size, adapt, read the high-water mark again: peak = VmHWM - VmRSS before. Callers run
this in a fresh worker per method, so the allocator holds no freed memory from earlier methods that
would hide growth. CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_supported() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def peak_memory_bytes(fn: Callable[[], object], device: str = "cpu") -> int:
    """Bytes of memory fn() needed at its peak beyond what the process held before."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    fn()
    return max(0, _status_kib("VmHWM") - before) * 1024
