"""The batch is fitted to the free memory before it starts: the measured estimate holds what a
certify batch really uses, a lowered batch gives the same boxes, and one sample that cannot fit
is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nonuniform.certify.memory as memory
from nonuniform import certify_boxes
from nonuniform.certify.settings import CertifyConfig
from nonuniform.engine.bounds import BoundedModel
from nonuniform.runtime.memory import PeakMemory


def _conv_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 20), nn.ReLU(), nn.Linear(20, 3),
    ).eval()  # fmt: skip
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    return net, x


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_the_estimate_covers_what_a_certify_batch_uses(method):
    net, x = _conv_net()
    alpha = {"iterations": 2, "alpha_steps": 3, "alpha_steps_check": 3} if method == "alpha-crown" else {}
    cfg = CertifyConfig.build(None, method=method, **alpha)
    est = memory.measure_memory(
        BoundedModel(net, (1, 12, 12)), BoundedModel(net, (1, 12, 12), torch.float64), x, cfg
    )
    assert est.per_sample > 0
    with PeakMemory() as used:
        certify_boxes(net, x, config=cfg, batch_size=len(x))
    # the live tensors of the whole batch, within the allocator margin the batch is planned with
    assert est.batch_bytes(len(x)) >= used.peak, (est, used.peak)


def test_a_lowered_batch_says_so_and_gives_the_same_boxes(monkeypatch):
    net, x = _conv_net()
    full = certify_boxes(net, x, batch_size=4)
    bm = BoundedModel(net, (1, 12, 12))
    est = memory.measure_memory(
        bm, BoundedModel(net, (1, 12, 12), torch.float64), x, CertifyConfig.build(None)
    )
    room = est.batch_bytes(2) / memory.FREE_SHARE * 1.01  # two samples fit, not three
    monkeypatch.setattr(memory, "free_memory", lambda device: int(room))
    # the measurement's own accuracy is tested above; re-measuring here may differ by a few bytes
    monkeypatch.setattr(memory, "measure_memory", lambda *a: est)
    with pytest.warns(UserWarning, match="batch_size 4 would need .* using 2"):
        small = certify_boxes(net, x, batch_size=4)
    assert small.settings["batch_size"] == 2
    np.testing.assert_allclose(small.mean_log_radius, full.mean_log_radius, atol=1e-3)
    assert small.certified.tolist() == full.certified.tolist()
    # a batch that fits is left alone, without measuring
    monkeypatch.setattr(memory, "free_memory", lambda device: 10**15)
    monkeypatch.setattr(memory, "measure_memory", lambda *a: pytest.fail("measured although it fits"))
    assert certify_boxes(net, x, batch_size=4).settings["batch_size"] == 4


def test_one_sample_that_cannot_be_measured_is_one_clear_error(monkeypatch):
    net, x = _conv_net()

    def no_memory(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(memory, "free_memory", lambda device: 1000)
    monkeypatch.setattr(memory, "measure_memory", no_memory)
    with pytest.raises(memory.DoesNotFit, match="one sample's bounds do not fit in the free memory"):
        certify_boxes(net, x, batch_size=4)
