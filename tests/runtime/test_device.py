"""The GPU path: the same bounds and boxes on CUDA as on the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from nonuniform import certify_boxes, compute_bounds, load_model
from nonuniform.zoo.samples import load_samples
from tests.graph_nets import TinyResNet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@cuda
@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-cnn-small", "mnist-lstm"])
def test_bounds_and_boxes_match_cpu(name):
    model, _ = load_model(name)
    x, y = load_samples("mnist")
    lo, hi = (x[:4] - 0.01).clamp(0, 1), (x[:4] + 0.01).clamp(0, 1)
    lb_cpu, _ = compute_bounds(model, lo, hi)
    lb_gpu, _ = compute_bounds(model.cuda(), lo.cuda(), hi.cuda())
    assert torch.allclose(lb_cpu, lb_gpu.cpu(), atol=1e-5, rtol=1e-5)
    cpu = certify_boxes(model.cpu(), x[:2], y[:2], iterations=10, device="cpu")
    gpu = certify_boxes(model, x[:2], y[:2], iterations=10, device="cuda")
    assert abs(cpu.mean_log_radius - gpu.mean_log_radius).max() < 1e-3


@cuda
def test_traced_graph_on_cuda():
    net = TinyResNet(seed=1)
    x = torch.rand(2, 1, 8, 8)
    lb_cpu, _ = compute_bounds(net, x - 0.02, x + 0.02)
    lb_gpu, _ = compute_bounds(net.cuda(), (x - 0.02).cuda(), (x + 0.02).cuda())
    assert torch.allclose(lb_cpu, lb_gpu.cpu(), atol=1e-5, rtol=1e-5)
