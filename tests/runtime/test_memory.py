"""PeakMemory counts the live bytes of tensors made in its block; free_memory sees ulimit -v."""

from __future__ import annotations

import subprocess
import sys

import torch

from nonuniform.runtime.device import free_memory
from nonuniform.runtime.memory import PeakMemory, out_of_memory

MB = 10**6  # one (1000, 1000) float32 tensor is 4 MB


def test_peak_counts_live_tensors_once_and_forgets_freed_ones():
    base = torch.ones(1000, 1000)  # made before the block: not counted
    with PeakMemory() as m:
        a = base * 2  # 4 MB
        v = a.view(-1)[:10]  # a view: no new storage
        a.add_(1)  # in place: nothing new
        del v
    assert 4 * MB <= m.peak < 4.5 * MB
    with PeakMemory() as m:
        for _ in range(200):  # 4 MB made and dropped each time: never more than two alive
            a = base * 2
    assert 4 * MB <= m.peak <= 2 * 4 * MB * 1.2


def test_peak_includes_the_autograd_tape_and_the_backward_pass():
    w = torch.randn(500, 500, requires_grad=True)
    with PeakMemory() as no_tape, torch.no_grad():
        torch.tanh(torch.tanh(w @ w) @ w).sum()
    with PeakMemory() as tape:
        y = torch.tanh(torch.tanh(w @ w) @ w).sum()
        torch.autograd.grad(y, w)
    assert tape.peak > no_tape.peak + 1 * MB  # tanh outputs kept for backward, plus gradients


def test_free_memory_respects_the_address_space_limit():
    code = (
        "import torch; from nonuniform.runtime.device import free_memory as f; print(f(torch.device('cpu')))"
    )
    limit_kb = 3 * 2**20
    out = subprocess.run(
        ["bash", "-c", f"ulimit -v {limit_kb}; exec {sys.executable} -c \"{code}\""],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert 0 < int(out.stdout) < limit_kb * 1024
    assert free_memory(torch.device("cpu")) > 0


def test_allocation_failures_are_recognised():
    assert out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    )
    assert out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert out_of_memory(MemoryError())
    assert not out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
