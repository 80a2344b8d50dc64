"""How many CPU threads torch may use: never more than the cores this process may run on.

PyTorch sizes its intra-op pool from the machine's cores, not from the CPUs the process is
allowed to use (``taskset``, container CPU sets), so on a shared or restricted machine every
parallel op waits for threads that cannot run. :func:`configure_threads` picks ``n`` if given,
else ``OMP_NUM_THREADS`` if set, else the number of usable cores, and caps it at the latter.
Importing :mod:`nonuniform` applies the cap only (a user's larger explicit setting is reduced,
never raised); the CLI's ``--threads`` sets it.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (see the module docstring); returns the number set."""
    cores = available_cores()
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        n = int(env) if env.isdigit() and int(env) > 0 else cores
    if n < 1:
        raise ValueError(f"--threads must be at least 1, got {n}")
    n = min(n, cores)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def cap_threads() -> None:
    """Lower torch's thread count to the usable cores if it is above them."""
    if torch.get_num_threads() > available_cores():
        torch.set_num_threads(available_cores())


__all__ = ["available_cores", "cap_threads", "configure_threads"]
