"""Peak working memory of one adaptation, measured the same way for every method.

CPU (Linux): reset the process's resident high-water mark (write 5 to /proc/self/clear_refs), note
the resident size, adapt, read the high-water mark again: peak = VmHWM - VmRSS before. The worker
runs with MALLOC_MMAP_THRESHOLD_ (MEASURE_ENV) so glibc maps every block >= 64 KiB on its own and
returns it on free: resident size then follows live tensors instead of a heap that never shrinks,
and one warm-up adaptation before the measured one keeps one-time set-up out of the figure. Callers
still use a fresh worker per method. CUDA: torch.cuda.max_memory_allocated after
reset_peak_memory_stats.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from pathlib import Path

import torch

MMAP_THRESHOLD = 65536  # bytes; glibc's M_MMAP_THRESHOLD
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def map_large_blocks() -> bool:
    """Make this process's glibc map blocks >= MMAP_THRESHOLD on their own (see above); False
    where there is no glibc (the figure then includes heap slack)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError, TypeError):
        return False


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
