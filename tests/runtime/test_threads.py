"""Thread policy: never more torch threads than usable cores; OMP_NUM_THREADS and --threads win."""

from __future__ import annotations

import pytest
import torch

from nonuniform.runtime.threads import available_cores, configure_threads


def test_threads_are_capped_and_configurable(monkeypatch):
    import nonuniform.runtime.threads as threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0)
    try:
        assert configure_threads(10_000) == available_cores()
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert configure_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert configure_threads() == available_cores()
        with pytest.raises(ValueError, match="at least 1"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_busy_cores_are_left_alone(monkeypatch):
    import nonuniform.runtime.threads as threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        monkeypatch.setattr(threads, "busy_elsewhere", lambda: 10_000)
        assert configure_threads() == 1  # everything busy: one thread, never zero
        monkeypatch.setattr(threads, "busy_elsewhere", lambda: 1)
        assert configure_threads() == max(1, available_cores() - 1)
        assert configure_threads(available_cores()) == available_cores()  # an explicit choice wins
        monkeypatch.undo()  # the real reader works on this machine
        assert 0 <= threads.busy_elsewhere() < 100_000
    finally:
        torch.set_num_threads(before)
