from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    """The CLI's thread policy for the whole suite (the library sets none on import): a
    descheduled thread makes every small parallel op wait (see nonuniform.runtime.threads)."""
    from nonuniform.runtime.allocator import configure_allocator
    from nonuniform.runtime.threads import available_cores, configure_threads

    # Under pytest-xdist (the README's `-n 2`) each worker gets its share of the cores: workers
    # inherit the controller's environment, so the share is fixed there before they start.
    workers = _xdist_workers(config)
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // workers)))
    # The CLI runs in the suite re-apply the policy; a thread count that followed the machine's
    # load between two runs would change float32 sums (resume tests compare boxes bit for bit).
    os.environ.setdefault("OMP_NUM_THREADS", str(configure_threads()))
    configure_allocator()


def _xdist_workers(config) -> int:
    """How many pytest-xdist workers share the machine (1 without xdist)."""
    env = os.environ.get("PYTEST_XDIST_WORKER_COUNT")  # set in each worker
    if env and env.isdigit():
        return int(env)
    n = getattr(config.option, "numprocesses", None)  # the controller, after `-n auto` is resolved
    return n if isinstance(n, int) and n > 0 else 1


def shared_data_dir() -> Path | None:
    """The full data sets: $NONUNIFORM_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("NONUNIFORM_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "mnist").is_dir():
            return cand
    return None


def shared_models_dir() -> Path | None:
    """The third-party VNN-COMP 2021 networks: ../shared/models/vnncomp2021 beside the repository."""
    cand = REPO.parent / "shared" / "models" / "vnncomp2021"
    return cand if cand.is_dir() else None


@pytest.fixture
def vnncomp_dir() -> Path:
    d = shared_models_dir()
    if d is None:
        pytest.skip("third-party networks not found: put ../shared/models/vnncomp2021 beside the repository")
    return d


@pytest.fixture
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("full MNIST/Fashion-MNIST not found: set NONUNIFORM_DATA or put ../shared/data")
    return d


@pytest.fixture(autouse=True)
def _threads():
    """NONUNIFORM_THREADS if set, else the library's policy (fewer threads on a busy machine)."""
    from nonuniform.runtime.threads import configure_threads

    env = os.environ.get("NONUNIFORM_THREADS")
    if env:
        torch.set_num_threads(int(env))
    else:
        configure_threads()
