"""Devices: resolving ``auto`` and how much memory one has free."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda if available else cpu; a clear error when CUDA is asked but absent."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch.cuda.is_available() is False; use --device cpu")
    return dev


def free_memory(device: torch.device) -> int:
    """Bytes currently available on ``device``. CUDA: free device memory. CPU: the least of the
    system's MemAvailable, what the address-space limit leaves (``ulimit -v``) and what the
    cgroup's memory limit leaves (containers, systemd slices)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    page = os.sysconf("SC_PAGE_SIZE")
    limits = [_meminfo_available() or page * os.sysconf("SC_PHYS_PAGES")]
    try:
        import resource  # POSIX only
    except ImportError:
        resource = None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0] if resource is not None else -1
    statm = _read_int("/proc/self/statm", page)
    if resource is not None and soft != resource.RLIM_INFINITY and statm is not None:
        limits.append(soft - statm)
    cap = _read_int("/sys/fs/cgroup/memory.max")
    if cap is not None:
        limits.append(cap - (_read_int("/sys/fs/cgroup/memory.current") or 0))
    return max(0, int(min(x for x in limits if x is not None)))


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read_int(path: str, scale: int = 1) -> int | None:
    """The first number in a small file (times ``scale``); None if absent or not a number ("max")."""
    try:
        with open(path) as f:
            return int(f.read().split()[0]) * scale
    except (OSError, ValueError, IndexError):
        return None


__all__ = ["free_memory", "resolve_device"]
