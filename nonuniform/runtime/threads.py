"""How many CPU threads torch may use: never more than the cores this process may run on.

PyTorch sizes its intra-op pool from the machine's cores, not from the CPUs the process is
allowed to use (``taskset``, container CPU sets), so on a shared or restricted machine every
parallel op waits for threads that cannot run. The same happens when other processes keep cores
busy: an LSTM bound at batch 25 takes 1.1 s alone with 2 threads or 1, but 4.6 s with 2 threads
beside one busy process (1.2 s with 1 thread) -- each of its thousands of small parallel ops
waits for the thread that shares a core. :func:`configure_threads` picks ``n`` if given, else
``OMP_NUM_THREADS`` if set, else the usable cores minus the processes running elsewhere right
now (``/proc/loadavg``), at least 1, and caps it at the usable cores. Importing :mod:`nonuniform`
changes nothing (a library leaves its host's threads alone); the CLI applies the policy, and its
``--threads`` sets the count.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def busy_elsewhere() -> int:
    """Tasks running or runnable right now other than this one (``/proc/loadavg``; 0 elsewhere)."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - 1)


def default_threads() -> int:
    """The usable cores that nothing else is using right now, at least 1."""
    return max(1, available_cores() - busy_elsewhere())


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (see the module docstring); returns the number set."""
    cores = available_cores()
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        n = int(env) if env.isdigit() and int(env) > 0 else default_threads()
    if n < 1:
        raise ValueError(f"--threads must be at least 1, got {n}")
    n = min(n, cores)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def cap_threads() -> None:
    """Lower torch's thread count to :func:`default_threads` if it is above it."""
    if torch.get_num_threads() > default_threads():
        torch.set_num_threads(default_threads())


__all__ = ["available_cores", "busy_elsewhere", "cap_threads", "configure_threads", "default_threads"]
