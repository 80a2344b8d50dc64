"""The C allocator's policy for a process that computes bounds (opt-in; the CLI applies it).

A bound allocates and frees tensors of tens of megabytes many times per second. glibc serves
such blocks with ``mmap`` (or returns the freed top of its heap to the system), so every bound
touches fresh pages: on the MNIST MLP at batch 32 a third of CROWN's time was page faults in the
kernel (4,400 minor faults per bound; 30.7 -> 23.5 ms without the gradient, 68 -> 51 ms with it,
verivital's max-pool convnet 64 -> 60 ms; 2026-12-02). :func:`configure_allocator` keeps such
blocks in the heap (``M_MMAP_MAX = 0``) and freed memory for reuse up to ``keep`` bytes
(``M_TRIM_THRESHOLD``). The process's resident size then stays near its peak instead of falling
between bounds -- what a batch job wants and a long-lived service may not, hence opt-in. Only
glibc has ``mallopt``; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

#: Freed heap memory kept for reuse (bytes); beyond it the top of the heap is returned.
KEEP = 2**31 - 1  # mallopt's largest value (2 GiB)


def configure_allocator(keep: int = KEEP) -> bool:
    """Serve large tensors from a heap that keeps up to ``keep`` freed bytes; True if applied."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = min(int(keep), KEEP)  # mallopt takes an int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, keep))


__all__ = ["KEEP", "configure_allocator"]
