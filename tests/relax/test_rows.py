"""Row arithmetic shared by the relaxations and the engine (:mod:`nonuniform.relax.rows`)."""

from __future__ import annotations

import pytest
import torch

from nonuniform.relax.rows import row_dot


@pytest.mark.parametrize("batches", [(3, 3), (1, 3), (3, 1)])
def test_row_dot_values_and_gradients(batches) -> None:
    """``row_dot`` (a row vector times transposed rows, with its own gradient) equals the plain
    sum of products, broadcasting a batch axis of size 1 on either side; its gradient passes
    gradcheck in both arguments, and a transposed (non-contiguous) ``a`` is read correctly."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(batches[0], 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(batches[1], 7, generator=g, dtype=torch.float64, requires_grad=True)
    want = (a * v.unsqueeze(1)).sum(-1)
    torch.testing.assert_close(row_dot(a, v), want, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(row_dot(a, v), want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(row_dot, (a, v))
    at = a.detach().transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(row_dot(at, v.detach()), want.detach(), rtol=0, atol=1e-12)
