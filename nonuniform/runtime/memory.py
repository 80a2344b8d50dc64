"""Peak tensor memory of a computation, measured on any device.

CPU PyTorch keeps no allocator statistics, and a process's resident size neither falls when
tensors are freed nor counts what a ``ulimit -v`` refuses, so the peak is measured at the level
that is the same everywhere: every tensor a dispatched operation returns is counted while its
storage lives (views and in-place results share a storage and count once). The result is the
largest sum of live bytes *created inside the block* (parameters and inputs made before it are
not counted); allocator overhead and fragmentation come on top (callers keep a margin).
"""

from __future__ import annotations

from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    """``with PeakMemory() as m: ...`` then ``m.peak``: the most bytes of tensors created in the
    block alive at once (autograd's saved tensors and the backward pass included)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[tuple[str, int], tuple[StorageWeakRef, int]] = {}
        self.now = 0
        self.peak = 0
        self._new = self._added = 0

    def _sweep(self) -> None:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            self.now -= self.live.pop(k)[1]
        self._new = self._added = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            key = (str(storage.device), storage.data_ptr())
            old = self.live.get(key)
            if old is not None:
                if not old[0].expired():
                    continue  # a view or an in-place result: already counted
                self.now -= old[1]  # the address was freed and reused
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self._new += 1
            self._added += storage.nbytes()
            self.now += storage.nbytes()
        if self.now > self.peak:
            # Dead storages are counted off when the peak would grow, once an eighth of the live
            # entries or of the peak's bytes is new (sweeps stay linear in all; the peak may
            # include up to that much that is already dead).
            if self._new >= len(self.live) // 8 or self._added >= self.peak // 8:
                self._sweep()
            self.peak = max(self.peak, self.now)
        return out


def out_of_memory(e: BaseException) -> bool:
    """An allocation failure (Python's MemoryError, torch's CPU allocator, CUDA): worth retrying
    with a smaller batch. Beyond a hard limit (``ulimit -v``, a cgroup with swap accounting off)
    the kernel may kill the process instead; the parts already written survive that."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text


__all__ = ["PeakMemory", "out_of_memory"]
