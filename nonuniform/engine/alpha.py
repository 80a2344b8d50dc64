"""Full alpha-CROWN: optimisable lower slopes of ReLU/LeakyReLU neurons in every bound pass.

CROWN picks each unstable ReLU's lower slope by a rule (1 if u > -l else the negative slope); any
slope in [negative_slope, 1] gives a sound lower line, so the slopes are free parameters of the
bound (Xu et al. 2021, "Fast and complete", the alpha-CROWN paper). As there, every *bound target*
has its own slope set: the final pass one slope per specification and neuron, and the backward
rows that bound the input of each later activation op one slope per row and neuron. Tighter
intermediate bounds then tighten every later relaxation, which final-pass-only slopes cannot do.

:class:`Slopes` holds them indexed by neuron (not by the rows a box happens to need), so a set
stays meaningful when the box changes: the box optimiser carries one set per sample and updates
it with the log-radii (joint optimisation, :func:`nonuniform.certify.optimiser.optimise`).

Rows below a convolutional chain are patches (:mod:`~nonuniform.engine.patches`); their slopes
are stored per row *under its patch* only, ``(batch, 2 n_i, C_j, ph_j, pw_j)``, a fraction of
a full map per row. A target whose slope set would exceed :data:`SLOPE_ELEMENTS` per sample
keeps CROWN's slopes; Sigmoid/Tanh keep CROWN's lines. ``bm`` is a
:class:`~nonuniform.engine.bounds.BoundedModel` (passed in, not imported: the engine calls this
module).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .patches import patch_windows, row_windows

#: Largest slope set of one intermediate target, in elements per sample (its rows times the
#: neurons of every ReLU below). Larger targets keep CROWN's slopes. 2**20 admits the dense layer
#: after the flatten of mnist-cnn-small (100 neurons x 4,704 ReLUs below).
SLOPE_ELEMENTS = 2**20


@dataclass
class Slopes:
    """Lower slopes per bound target.

    ``inter[i][j]``: ``(batch, 2 * n_i, *shape_j)`` -- the rows bounding the ``n_i`` neurons at
    the input of activation op ``i`` (lower-bound rows, then upper-bound rows) use these slopes
    at the ReLU-family op ``j < i``; for patch rows ``(batch, 2 * n_i, C_j, ph_j, pw_j)``, the
    slopes under each row's patch window at ``j``. ``final[j]``: ``(batch, specs, *shape_j)``.
    """

    inter: dict[int, dict[int, Tensor]]
    final: dict[int, Tensor]

    def tensors(self) -> list[Tensor]:
        return [t for table in self.inter.values() for t in table.values()] + list(self.final.values())

    def map(self, fn) -> Slopes:
        """The same structure with ``fn`` applied to every tensor."""
        return Slopes(
            {i: {j: fn(t) for j, t in table.items()} for i, table in self.inter.items()},
            {j: fn(t) for j, t in self.final.items()},
        )

    def select(self, idx: Tensor) -> Slopes:
        return self.map(lambda t: t[idx])

    def assign(self, idx: Tensor, other: Slopes, mask: Tensor | None = None) -> None:
        """Write ``other``'s rows into samples ``idx`` (where ``mask``, if given)."""
        for mine, theirs in zip(self.tensors(), other.tensors()):
            sel = idx if mask is None else idx[mask]
            mine[sel] = theirs if mask is None else theirs[mask]

    def project(self, ops) -> None:
        """Clamp in place to the sound range [negative_slope, 1] of each op."""
        with torch.no_grad():
            for table in [*self.inter.values(), self.final]:
                for j, t in table.items():
                    t.clamp_(ops[j].relaxation.negative_slope, 1.0)


def alpha_ops(bm, state) -> list[int]:
    """ReLU-family ops with slopes to optimise (in ``state.pre``: every op of the model)."""
    return [j for j in state.pre if getattr(getattr(bm.net.ops[j], "relaxation", None), "has_alpha", False)]


def initial_slopes(bm, state, specs: int) -> Slopes:
    """CROWN's slopes at the boxes of ``state``, copied to every target (alpha-CROWN's start)."""
    ops = alpha_ops(bm, state)
    b = state.lower.shape[0]
    default = {j: bm.net.ops[j].relaxation.default_alpha(*(t.detach() for t in state.pre[j])) for j in ops}

    def copies(j: int, rows: int) -> Tensor:
        return default[j].unsqueeze(1).expand(b, rows, *default[j].shape[1:]).clone()

    inter = {}
    for i, patched in state.row_targets.items():
        src = bm.net.ops[i].inputs[0]
        n_i = math.prod(bm.net.ops[src].out_shape)
        if patched:  # rows are patches: one slope per row and position under its patch
            windows = patch_windows(bm.net, src, state.relaxations) or {}
            below = [j for j in ops if j in windows]
            elements = 2 * n_i * sum(bm.net.ops[j].out_shape[0] * math.prod(windows[j][1]) for j in below)
            if below and elements <= SLOPE_ELEMENTS:
                inter[i] = row_windows(bm.net, src, windows, {j: default[j] for j in below})
            continue
        below = [j for j in ops if j < i]
        if below and 2 * n_i * sum(default[j][0].numel() for j in below) <= SLOPE_ELEMENTS:
            inter[i] = {j: copies(j, 2 * n_i) for j in below}
    return Slopes(inter, {j: copies(j, specs) for j in ops})


def pick_rows(slopes: Tensor, rows: Tensor) -> Tensor:
    """The slope rows ``rows`` (batch, k) of a slope table (batch, 2n, ...): (batch, k, ...)."""
    b, k = rows.shape
    flat = slopes.flatten(2)
    picked = flat.gather(1, rows[:, :, None].expand(b, k, flat.shape[2]))
    return picked.reshape(b, k, *slopes.shape[2:])


def row_relaxations(ops, relax: dict, pre: dict, table: dict[int, Tensor], rows: Tensor) -> dict:
    """``relax`` with each row's own lower slopes at the ops of ``table``.

    ``rows`` (batch, k): the slope rows of the bounds being computed (``n`` + neuron for the
    lower bound of neuron ``n``'s upper-bound row, the neuron itself for its lower bound)."""
    out = dict(relax)
    for j, slopes in table.items():
        out[j] = ops[j].relaxation.relax(*pre[j], "crown", alpha=pick_rows(slopes, rows))
    return out


def final_relaxations(bm, state, slopes: Slopes) -> dict:
    """The final pass's relaxations with the per-specification slopes of ``slopes``."""
    out = dict(state.relaxations)
    for j, a in slopes.final.items():
        out[j] = bm.net.ops[j].relaxation.relax(*state.pre[j], "crown", alpha=a)
    return out


def sloped_bound(bm, lam: Tensor, lower: Tensor, upper: Tensor, slopes: Slopes, reuse=None) -> Tensor:
    """One alpha-CROWN pass with the given slopes: (batch, specs), differentiable in the box and
    in the slopes. ``reuse`` (a CROWN state of the same boxes) supplies the intermediate bounds of
    targets without slopes instead of recomputing them (sound: they hold for these boxes)."""
    state = bm.propagate(lower, upper, "crown", slopes=slopes, reuse=reuse)
    return bm.backward(lam, final_relaxations(bm, state, slopes), lower, upper)


def maximise(params, bound: Callable, steps: int, lr: float, ops=None):
    """Projected Adam on ``params`` (``tensors/map/assign/project``: :class:`Slopes` or the
    recurrent parameters) maximising each sample's summed ``bound(params)`` (batch, specs).

    Works on a detached copy; every iterate is a sound bound. Returns each sample's best
    parameters and the best bound of each specification over all iterates. Adam is elementwise
    and each sample's bound depends on its own parameters only, so results do not depend on the
    batch. The one loop behind both engines' alpha-CROWN."""
    params = params.map(lambda t: t.detach().clone().requires_grad_(True))
    best = params.map(lambda t: t.detach().clone())
    best_score = best_out = None
    opt = torch.optim.Adam(params.tensors(), lr=lr) if params.tensors() else None
    with torch.enable_grad():
        for step in range(steps + 1):
            out = bound(params)
            with torch.no_grad():
                score = out.sum(1)
                if best_score is None:
                    best_score = torch.full_like(score, -math.inf)
                better = score > best_score
                best_score = torch.where(better, score, best_score)
                best.assign(
                    torch.arange(len(score), device=score.device), params.map(torch.Tensor.detach), better
                )
                best_out = out.detach() if best_out is None else torch.maximum(best_out, out.detach())
            if step == steps or opt is None:
                break
            opt.zero_grad(set_to_none=True)
            (-out.sum()).backward()
            opt.step()
            params.project(ops)
    return best, best_out


def optimised_bound(
    bm, lam: Tensor, state, steps: int, lr: float, init: Slopes | None = None
) -> tuple[Tensor, Slopes]:
    """alpha-CROWN's bound of ``lam @ f`` on the boxes of ``state`` (a CROWN state).

    :func:`maximise` on all slopes at once, from ``init`` or CROWN's. With a gradient tape on the
    box the best slopes are used once more with the tape, so the result stays differentiable in
    the box; without one, the best bound of each specification over all iterates is returned
    (each is a proof). Returns the bound and the best slopes.
    """
    lower, upper = state.lower, state.upper
    lam_d, lo_d, up_d = lam.detach(), lower.detach(), upper.detach()
    fixed = bm.propagate(lo_d, up_d, "crown") if lower.requires_grad or upper.requires_grad else state
    slopes = init if init is not None else initial_slopes(bm, fixed, lam.shape[1])
    if not slopes.tensors():  # no ReLU-family neuron: CROWN's bound
        return bm.backward(lam, state.relaxations, lower, upper), slopes
    best, best_out = maximise(
        slopes, lambda s: sloped_bound(bm, lam_d, lo_d, up_d, s, reuse=fixed), steps, lr, bm.net.ops
    )
    if torch.is_grad_enabled() and (lower.requires_grad or upper.requires_grad):
        return sloped_bound(bm, lam, lower, upper, best, reuse=state), best
    return best_out, best
