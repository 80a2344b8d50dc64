"""Thread policy: never more torch threads than usable cores; OMP_NUM_THREADS and --threads win."""

from __future__ import annotations

import pytest
import torch

from nonuniform.threads import available_cores, configure_threads


def test_threads_are_capped_and_configurable(monkeypatch):
    before = torch.get_num_threads()
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
