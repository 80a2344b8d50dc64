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
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .patches import patch_windows, row_windows

#: Largest slope set of one intermediate target, in elements per sample (its slot rows times the
#: slopes each row carries). Larger targets keep CROWN's slopes. At 2**21 (8 MiB per sample in
#: float32; Adam keeps three more copies and the best iterate one) every target of
#: mnist-cnn-small, cifar_base_kw and resnet_2b at the benchmark's boxes is optimised.
SLOPE_ELEMENTS = 2**21


@dataclass
class Slopes:
    """Lower slopes per bound target.

    ``final[j]``: ``(batch, specs, *shape_j)``, the final pass's slopes at ReLU-family op ``j``.
    ``inter[i][j]``: ``(batch, 2 S_i, *shape_j)`` -- slopes at op ``j`` of the rows bounding the
    neurons at the input of activation op ``i``. Only the neurons that needed bounds when the
    set was made have rows (*slots*; ``S_i`` = their largest count in the batch): ``slots[i]``
    ``(batch, 2 n_i)`` maps the lower-bound row of neuron ``k`` (index ``k``) and its upper-bound
    row (index ``n_i + k``) to a slot, or -1: such rows use CROWN's slopes at the current bounds.
    Patch rows carry the slopes under their patch window only: ``(batch, 2 S_i, C_j, ph_j, pw_j)``.
    Indexing by neuron keeps a set meaningful when the box changes (the joint optimiser).
    """

    inter: dict[int, dict[int, Tensor]]
    final: dict[int, Tensor]
    slots: dict[int, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not set(self.inter) <= set(self.slots):
            raise ValueError(f"Slopes: targets {sorted(set(self.inter) - set(self.slots))} have no slot map")

    def tensors(self) -> list[Tensor]:
        return [t for table in self.inter.values() for t in table.values()] + list(self.final.values())

    def map(self, fn) -> Slopes:
        """The same structure with ``fn`` applied to every slope tensor (slots are shared)."""
        return Slopes(
            {i: {j: fn(t) for j, t in table.items()} for i, table in self.inter.items()},
            {j: fn(t) for j, t in self.final.items()},
            self.slots,
        )

    def select(self, idx: Tensor) -> Slopes:
        out = self.map(lambda t: t[idx])
        out.slots = {i: t[idx] for i, t in self.slots.items()}
        return out

    def assign(self, idx: Tensor, other: Slopes, mask: Tensor | None = None) -> None:
        """Write ``other``'s rows (a :meth:`select` of these samples) into samples ``idx`` (where
        ``mask``, if given)."""
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


def _slots(need: Tensor) -> tuple[Tensor, Tensor]:
    """Slots of the needed neurons ``need`` (batch, n): ``(slots (batch, 2n), neurons (batch, 2S))``
    -- each sample's needed neurons in index order take slots 0..c-1 (lower rows) and S..S+c-1
    (upper rows); padding slots point at neuron 0 and no row maps to them."""
    b, n = need.shape
    counts = need.sum(1)
    s = int(counts.max())
    order = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :s]
    valid = torch.arange(s, device=need.device)[None, :] < counts[:, None]
    slots = torch.full((b, 2 * n + 1), -1, dtype=torch.long, device=need.device)
    k = torch.arange(s, device=need.device).expand(b, s)
    dump = torch.full_like(order, 2 * n)  # padding writes land in a dropped column
    slots.scatter_(1, torch.where(valid, order, dump), k)
    slots.scatter_(1, torch.where(valid, order + n, dump), k + s)
    neurons = torch.where(valid, order, 0)
    return slots[:, : 2 * n], torch.cat([neurons, neurons], 1)


def initial_slopes(bm, state, specs: int) -> Slopes:
    """CROWN's slopes at the boxes of ``state`` (alpha-CROWN's start): for the final pass, and
    for the rows of every intermediate target's neurons that need bounds at these boxes."""
    ops = alpha_ops(bm, state)
    b = state.lower.shape[0]
    default = {j: bm.net.ops[j].relaxation.default_alpha(*(t.detach() for t in state.pre[j])) for j in ops}

    def copies(j: int, rows: int) -> Tensor:
        return default[j].unsqueeze(1).expand(b, rows, *default[j].shape[1:]).clone()

    inter, slots = {}, {}
    for i, patched in state.row_targets.items():
        src = bm.net.ops[i].inputs[0]
        need = bm.net.ops[i].relaxation.needs_bounds(*(t.detach() for t in state.pre[i])).reshape(b, -1)
        if not bool(need.any()):
            continue
        slot, neurons = _slots(need)
        rows = neurons.shape[1]
        if patched:  # rows are patches: one slope per row and position under its patch
            windows = patch_windows(bm.net, src, state.relaxations) or {}
            below = [j for j in ops if j in windows]
            per_row = sum(bm.net.ops[j].out_shape[0] * math.prod(windows[j][1]) for j in below)
            if below and rows * per_row <= SLOPE_ELEMENTS:
                inter[i] = row_windows(bm.net, src, windows, {j: default[j] for j in below}, neurons)
                slots[i] = slot
            continue
        below = [j for j in ops if j < i]
        if below and rows * sum(default[j][0].numel() for j in below) <= SLOPE_ELEMENTS:
            inter[i] = {j: copies(j, rows) for j in below}
            slots[i] = slot
    return Slopes(inter, {j: copies(j, specs) for j in ops}, slots)


def pick_rows(slopes: Tensor, rows: Tensor) -> Tensor:
    """The slope rows ``rows`` (batch, k) of a slope table (batch, R, ...): (batch, k, ...)."""
    b, k = rows.shape
    flat = slopes.flatten(2)
    picked = flat.gather(1, rows[:, :, None].expand(b, k, flat.shape[2]))
    return picked.reshape(b, k, *slopes.shape[2:])


def slot_rows(slopes: Slopes, i: int, rows: Tensor) -> tuple[dict[int, Tensor], Tensor]:
    """The slopes of rows ``rows`` (batch, k) of target ``i`` (``n_i * upper + neuron``):
    ``({j: (batch, k, ...)}, valid (batch, k))``; rows without a slot read slot 0 and are marked
    invalid (they take CROWN's slopes)."""
    slot = slopes.slots[i].gather(1, rows)
    valid = slot >= 0
    return {j: pick_rows(t, slot.clamp(min=0)) for j, t in slopes.inter[i].items()}, valid


def row_relaxations(ops, relax: dict, pre: dict, slopes: Slopes, i: int, rows: Tensor) -> dict:
    """``relax`` with each row's own lower slopes at the ops of target ``i``'s table.

    ``rows`` (batch, k): the rows of the bounds being computed (``n`` + neuron for the upper
    bound of a neuron, the neuron itself for its lower bound)."""
    out = dict(relax)
    picked, valid = slot_rows(slopes, i, rows)
    for j, alpha in picked.items():
        crown = ops[j].relaxation.default_alpha(*pre[j]).unsqueeze(1)
        alpha = torch.where(valid.reshape(*valid.shape, *[1] * (alpha.dim() - 2)), alpha, crown)
        out[j] = ops[j].relaxation.relax(*pre[j], "crown", alpha=alpha)
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
