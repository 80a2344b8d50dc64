"""Output ranges certified through the margin machinery: every certified box keeps every output
in its range (checked on the plain model by sampling and corners, by PGD on the head, and exactly
by MILP), samples already out of range are not certified, and the head adds no looseness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nonuniform import certify_boxes, compute_bounds, verify_boxes
from nonuniform.attacks.pgd import falsify_boxes
from nonuniform.ir.output_range import OutputRange
from nonuniform.proof.milp import verify_box_milp


def _regressor(outputs: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, outputs)
    ).eval()


def _inputs(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("one_sided", [False, True])
def test_certified_boxes_keep_every_output_in_range(one_sided):
    net, x = _regressor(), _inputs()
    with torch.no_grad():
        y = net(x)
    lo = (y.min(0).values - 0.3).tolist()
    hi = [float("inf")] * 2 if one_sided else (y.max(0).values + 0.3).tolist()
    res = certify_boxes(net, x, output_range=(lo, hi), iterations=10)
    assert res.certified.all() and (res.labels == 0).all() and res.settings["output_range"] == [lo, hi]
    wrapped = OutputRange(net, lo, hi, 2)
    g = torch.Generator().manual_seed(2)
    for i in range(len(x)):
        b_lo, b_hi = torch.tensor(res.lower[i]), torch.tensor(res.upper[i])
        pts = b_lo + (b_hi - b_lo) * torch.rand(4000, 3, generator=g)
        corners = torch.cartesian_prod(*[torch.stack([b_lo[k], b_hi[k]]) for k in range(3)])
        with torch.no_grad():
            out = net(torch.cat([pts, corners]))
        assert (out >= torch.tensor(lo)).all() and (out <= torch.tensor(hi)).all()
        exact = verify_box_milp(wrapped, b_lo, b_hi, 0, time_limit=30)
        assert exact.status == "robust", (i, exact)
    attack = falsify_boxes(
        wrapped, torch.tensor(res.lower), torch.tensor(res.upper), torch.zeros(len(x)).long()
    )
    assert not attack.broken.any()
    assert verify_boxes(net, res).ok


def test_samples_out_of_range_are_not_certified_and_boxes_do_not_depend_on_batch_mates():
    net, x = _regressor(), _inputs(8)
    with torch.no_grad():
        y = net(x)[:, 0]
    lo, hi = float(y.median()), float(y.max()) + 1.0
    res = certify_boxes(net, x, output_range=(lo, hi), iterations=5)
    outside, clear = (y < lo).numpy(), (y > lo + 5e-3).numpy()
    assert outside.any() and clear.any()
    assert not res.certified[outside].any() and res.certified[clear].all()
    k = int(np.nonzero(clear)[0][0])
    alone = certify_boxes(net, x[[k]], output_range=(lo, hi), iterations=5)
    np.testing.assert_allclose(alone.lower[0], res.lower[k], atol=1e-5)
    np.testing.assert_allclose(alone.upper[0], res.upper[k], atol=1e-5)


def test_the_head_adds_no_looseness():
    """The head's margins are exactly the plain model's output bounds: hi - upper(f_k), lower(f_k) - lo."""
    net, x = _regressor(), _inputs(3)
    lo_b, hi_b = x - 0.1, x + 0.1
    plain_l, plain_u = compute_bounds(net, lo_b, hi_b, torch.eye(2))
    m, _ = compute_bounds(OutputRange(net, [-5, -6], [7, 8], 2), lo_b, hi_b, torch.tensor([[1.0, -1, 0, 0, 0],
        [1.0, 0, -1, 0, 0], [1.0, 0, 0, -1, 0], [1.0, 0, 0, 0, -1]]), bound_upper=False)  # fmt: skip
    expect = torch.stack([7 - plain_u[:, 0], plain_l[:, 0] + 5, 8 - plain_u[:, 1], plain_l[:, 1] + 6], 1)
    torch.testing.assert_close(m, expect, atol=1e-5, rtol=1e-5)


def test_bad_ranges_are_refused():
    net = _regressor()
    with pytest.raises(ValueError, match="not below"):
        OutputRange(net, 1.0, 0.0, 2)
    with pytest.raises(ValueError, match="one per output"):
        OutputRange(net, [0.0, 0.0, 0.0], 1.0, 2)
    with pytest.raises(ValueError, match="at least one finite end"):
        OutputRange(net, float("-inf"), float("inf"), 2)
    with pytest.raises(ValueError, match="per_logit"):
        certify_boxes(net, _inputs(2), output_range=(0, 1), per_logit=True)
