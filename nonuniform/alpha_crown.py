"""alpha-CROWN: the final pass with lower slopes of ReLU/LeakyReLU neurons optimised per spec.

``bm`` is a :class:`~nonuniform.bounds.BoundedModel` and ``state`` its
:class:`~nonuniform.bounds.BoundState` for the boxes (passed in, not imported: the engine calls
this module). Intermediate bounds stay CROWN's; every iterate is a sound relaxation (slopes are
projected to their valid range) and the best slopes per specification are kept, so the bound is
never looser than CROWN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def optimised_slopes_bound(bm, lam: Tensor, state, steps: int, lr: float) -> Tensor:
    """Final-pass bound with lower slopes optimised per specification.

    The slopes are optimised on a detached copy of the problem (every iterate is a sound
    relaxation, projected to its valid range); the best slopes per specification are then
    used once more with the gradient tape on, so the result stays differentiable in the box.
    """
    b, s2 = lam.shape[:2]
    layers = [
        i
        for i, (l, u) in state.pre.items()
        if bm.net.ops[i].relaxation.has_alpha and ((l < 0) & (u > 0)).any()
    ]
    if not layers or steps <= 0:
        return bm.backward(lam, state.relaxations, state.lower, state.upper)
    detached = {i: r.detach() for i, r in state.relaxations.items()}
    pre_d = {i: (l.detach(), u.detach()) for i, (l, u) in state.pre.items()}
    alpha = {
        i: bm.net.ops[i]
        .relaxation.default_alpha(*pre_d[i])
        .unsqueeze(1)
        .expand(b, s2, *pre_d[i][0].shape[1:])
        .clone()
        .requires_grad_(True)
        for i in layers
    }
    best_alpha = {i: a.detach().clone() for i, a in alpha.items()}
    best = None
    opt = torch.optim.Adam(alpha.values(), lr=lr)
    lam_d, lo_d, up_d = lam.detach(), state.lower.detach(), state.upper.detach()
    with torch.enable_grad():
        for _ in range(steps + 1):
            relax = dict(detached)
            for i in layers:
                relax[i] = bm.net.ops[i].relaxation.relax(*pre_d[i], "crown", alpha=alpha[i])
            out = bm.backward(lam_d, relax, lo_d, up_d)
            with torch.no_grad():
                better = out if best is None else out > best
                if best is None:
                    best = out.detach().clone()
                    better = torch.ones_like(best, dtype=torch.bool)
                else:
                    best = torch.where(better, out, best)
                for i in layers:
                    m = better.reshape(b, s2, *([1] * (alpha[i].dim() - 2)))
                    best_alpha[i] = torch.where(m, alpha[i].detach(), best_alpha[i])
            opt.zero_grad(set_to_none=True)
            (-out.sum()).backward()
            opt.step()
            with torch.no_grad():
                for i in layers:
                    alpha[i].clamp_(bm.net.ops[i].relaxation.negative_slope, 1.0)
    relax = dict(state.relaxations)
    for i in layers:
        relax[i] = bm.net.ops[i].relaxation.relax(*state.pre[i], "crown", alpha=best_alpha[i])
    return bm.backward(lam, relax, state.lower, state.upper)
