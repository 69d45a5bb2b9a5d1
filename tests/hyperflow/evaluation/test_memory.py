"""The peak-memory instrument counts what a call holds at its peak, exactly, and nothing else."""

from __future__ import annotations

import torch

from hyperflow.evaluation.memory import peak_memory_bytes

MB = 1 << 20


def _two_phases():
    # 4 MB held while 2 MB more come and go, then all freed: the peak is 6 MB, the total 10 MB
    a = torch.empty(MB, dtype=torch.float32)
    b = torch.empty(MB // 2, dtype=torch.float32)
    del b
    c = torch.empty(MB // 2, dtype=torch.float32)
    del a, c


def test_the_peak_is_what_was_live_at_once_not_the_total():
    assert peak_memory_bytes(_two_phases) == 6 * MB


def test_memory_held_before_the_call_is_not_counted_nor_its_release():
    held = [torch.empty(4 * MB, dtype=torch.uint8) for _ in range(2)]  # fn runs twice

    def free_then_allocate():
        held.pop()  # frees 4 MB allocated before: no negative start for the peak
        torch.empty(MB, dtype=torch.uint8)

    assert peak_memory_bytes(free_then_allocate) == MB


def test_the_same_call_reads_the_same_bytes_and_backward_costs_more():
    # what it is for: bias-tuning's backward keeps activations a forward pass frees
    torch.manual_seed(0)
    net = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(6)))
    x = torch.randn(64, 256)

    def forward():
        with torch.no_grad():
            net(x)

    def backward():
        net(x).sum().backward()
        net.zero_grad(set_to_none=True)

    reads = [peak_memory_bytes(forward) for _ in range(3)]
    assert len(set(reads)) == 1 and reads[0] > 0, reads
    # six layers' saved inputs plus their gradients against two live activations at a time
    assert peak_memory_bytes(backward) > 3 * reads[0]
