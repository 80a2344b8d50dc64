"""The bound of a ReLU-split leaf: alpha-beta-CROWN on the final pass, and where to split next.

A leaf of :class:`~nonuniform.proof.bab.ReluSplit` is the box with some ReLU inputs ``z`` constrained
to ``s z >= 0`` (``s`` = +1 or -1). Its intermediate bounds come from
:meth:`~nonuniform.engine.bounds.BoundedModel.propagate` (split neurons clipped at 0, every later
layer's bounds recomputed under the clip, intersected with the root's alpha-CROWN bounds). Its
final bound optimises two sets of free parameters of the backward pass at once:

* **alpha**: the lower slope of every unstable ReLU, one per specification row and neuron; any
  slope in ``[negative_slope, 1]`` gives a sound lower line (alpha-CROWN);
* **beta** >= 0: one multiplier per row and split neuron; ``spec @ f >= spec @ f - beta s z`` on
  the leaf, so the CROWN bound of the right-hand side is a lower bound of the margin there for any
  beta (beta-CROWN, Wang et al. 2021). Without it the split constraints would act only through
  the clipped intervals, and the final concretisation would still range over the whole box.

Every iterate is a sound bound; each row keeps its best. Each row's parameters affect that row
only, so the sum over rows is maximised by projected Adam (written out here: ``torch.optim``'s
first use costs ~1.5 s of imports, a large share of a small proof). Children start from their
parent's best parameters (the warm start alpha-beta-CROWN uses), carried in float32 within a
memory budget (:data:`CARRY_BYTES`): a warm start only has to be in range, not exact.

Branching (:func:`branch_choice`): the unstable neuron whose relaxation costs the failing rows
most, ``-min(lambda, 0) * upper_intercept`` summed over them, where ``lambda`` is the row's
coefficient at the ReLU's output in the final pass (BaBSR's intercept score, Bunel et al. 2020);
ops whose coefficients the pass does not expose (a ReLU fused with a max-pool) fall back to the
relaxation area times the neuron's outgoing weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Adam's step for the split multipliers. Margins are O(1-10) and so are the multipliers that
#: prove a leaf: at 0.05, 20 steps left a leaf of a 784-16-16-10 net at -0.15 that 0.3 proves
#: at +15 (the dual is piecewise linear; Adam with a small step crawls along it).
BETA_LR = 0.3
#: Adam's step for the lower slopes (range [0, 1]).
ALPHA_LR = 0.1
#: Largest total size of the warm starts kept in a search's queue (float32). Beyond it children
#: start from CROWN's slopes and zero multipliers (sound either way, only slower to converge).
CARRY_BYTES = 2**28


@dataclass
class LeafParams:
    """Optimisable parameters of a batch of leaves: ``alpha[j]`` ``(m, s, *shape_j)`` at each
    ReLU-family op ``j``; ``beta[i]`` ``(m, s, *shape_i)`` at each split op ``i`` (>= 0)."""

    alpha: dict[int, Tensor]
    beta: dict[int, Tensor]

    def tensors(self) -> list[Tensor]:
        return [*self.alpha.values(), *self.beta.values()]

    def nbytes(self) -> int:
        return sum(t.numel() * 4 for t in self.tensors())

    def pick(self, k: int) -> LeafParams:
        """Leaf ``k`` alone, in float32 (what a child carries)."""
        return LeafParams(
            {j: t[k : k + 1].detach().float() for j, t in self.alpha.items()},
            {i: t[k : k + 1].detach().float() for i, t in self.beta.items()},
        )


def start_params(bm, state, specs: int, carried: list[LeafParams | None], split_ops: list[int]) -> LeafParams:
    """Each leaf's starting parameters: its parent's where carried, else CROWN's slopes and zero
    multipliers (``state``: the leaves' CROWN state, batch ``m = len(carried)``)."""
    ops = bm.net.ops
    alpha, beta = {}, {}
    for j in split_ops:
        l, u = state.pre[j]
        crown = ops[j].relaxation.default_alpha(l, u).unsqueeze(1).expand(-1, specs, *l.shape[1:])
        alpha[j] = _fill(crown.clone(), [None if c is None else c.alpha.get(j) for c in carried])
        beta[j] = _fill(torch.zeros_like(crown), [None if c is None else c.beta.get(j) for c in carried])
    return LeafParams(alpha, beta)


def _fill(out: Tensor, rows: list[Tensor | None]) -> Tensor:
    """``out[k] = rows[k][0]`` where given, in one copy (a per-leaf loop cost 13% of a step)."""
    have = [k for k, r in enumerate(rows) if r is not None]
    if have:
        out[torch.tensor(have, device=out.device)] = torch.cat([rows[k] for k in have]).to(out.dtype)
    return out


def leaf_bound(
    bm,
    state,
    spec: Tensor,
    splits: dict[int, Tensor],
    params: LeafParams,
    steps: int,
    threshold: Tensor | None = None,
    record: dict[int, Tensor] | None = None,
    done=None,
) -> tuple[Tensor, LeafParams]:
    """Lower bounds ``(m, s)`` of ``spec @ f`` on each leaf and the parameters that gave them.

    ``state``: the leaves' CROWN state (split clips applied); ``spec`` ``(m, s, classes)``;
    ``splits[i]`` ``(m, *shape_i)`` int8 in {-1, 0, 1}. ``steps`` of projected Adam from
    ``params``; stops early once every row of every leaf clears ``threshold`` (a number or one per
    row). ``record``, if given, receives each ReLU op's coefficients ``(m, s, *shape)`` of the
    best iterate's pass (for :func:`branch_choice`). ``done(slack)``: which leaves (m,) are
    finished given their rows' slack over ``threshold`` (default: every row clears it).
    """
    ops, dt = bm.net.ops, bm.net.dtype
    m, s = spec.shape[:2]
    signs = {i: t.to(dt).unsqueeze(1) for i, t in splits.items() if t.any()}
    alpha = {j: t.detach().to(dt).clone().requires_grad_(True) for j, t in params.alpha.items()}
    beta = {i: params.beta[i].detach().to(dt).clone().requires_grad_(True) for i in signs}
    free = [*alpha.values(), *beta.values()]
    best = torch.full((m, s), -torch.inf, dtype=dt, device=spec.device)
    keep = LeafParams({j: t.detach().clone() for j, t in alpha.items()},
                      {i: t.detach().clone() for i, t in beta.items()})  # fmt: skip
    moments = [(torch.zeros_like(t), torch.zeros_like(t)) for t in free]
    for step in range(steps + 1):
        seen: dict[int, Tensor] = {}
        with torch.enable_grad():
            out = _pass(bm, state, spec, signs, alpha, beta, seen if record is not None else None)
        with torch.no_grad():
            better = out > best
            best = torch.where(better, out, best)
            _keep_rows(keep, alpha, beta, better)
            if record is not None:
                for j, lam in seen.items():
                    prev = record.get(j)
                    w = better.reshape(m, s, *[1] * (lam.dim() - 2))
                    record[j] = lam.detach() if prev is None else torch.where(w, lam.detach(), prev)
        # a leaf whose rows all clear the threshold stops (per leaf: no batch-mate changes a bound)
        live = torch.ones(m, dtype=torch.bool, device=spec.device)
        if threshold is not None:
            live = ~(done(best - threshold) if done is not None else (best >= threshold).all(1))
        if step == steps or not free or not bool(live.any()):
            break
        grads = torch.autograd.grad(out.sum(), free)
        with torch.no_grad():
            for t, g, (m1, m2) in zip(free, grads, moments):
                lr = BETA_LR if any(t is b for b in beta.values()) else ALPHA_LR
                _adam_ascent(t, g, m1, m2, step + 1, lr, live)
            for j, t in alpha.items():
                t.clamp_(ops[j].relaxation.negative_slope, 1.0)
            for t in beta.values():
                t.clamp_(min=0)
    return best, keep


def _pass(bm, state, spec, signs, alpha, beta, seen):
    """One backward pass with slopes ``alpha`` and split terms ``-beta s z``: ``(m, s)``."""
    ops, dt = bm.net.ops, bm.net.dtype
    last = len(ops) - 1
    relax = dict(state.relaxations)
    for j, a in alpha.items():
        relax[j] = ops[j].relaxation.relax(*state.pre[j], "crown", alpha=a)
    pending = {last: spec.to(dt)}
    for i, b in beta.items():
        src = ops[i].inputs[0]
        term = -b * signs[i]
        pending[src] = pending[src] + term if src in pending else term
    zero = torch.zeros(spec.shape[:2], dtype=dt, device=spec.device)
    return bm._backward(pending, last, relax, state.lower, state.upper, None, zero, record=seen)


def _keep_rows(keep: LeafParams, alpha: dict, beta: dict, better: Tensor) -> None:
    for table, live in ((keep.alpha, alpha), (keep.beta, beta)):
        for k, t in live.items():
            w = better.reshape(*better.shape, *[1] * (t.dim() - 2))
            table[k] = torch.where(w, t.detach(), table[k])


def _adam_ascent(t: Tensor, g: Tensor, m1: Tensor, m2: Tensor, step: int, lr: float, live: Tensor) -> None:
    """One Adam step *up* the gradient ``g`` (betas 0.9, 0.999), in place, on the leaves ``live``
    (``(m,)`` bool; the others keep their parameters)."""
    m1.mul_(0.9).add_(g, alpha=0.1)
    m2.mul_(0.999).addcmul_(g, g, value=0.001)
    denom = (m2 / (1 - 0.999**step)).sqrt_().add_(1e-8)
    move = (m1 / denom).mul_(lr / (1 - 0.9**step))
    t.add_(move * live.reshape(-1, *[1] * (t.dim() - 1)))


def branch_choice(bm, state, ops: list[int], j: int, record: dict[int, Tensor], failing: Tensor,
                  fallback) -> tuple[int, int] | None:  # fmt: skip
    """The unstable neuron of leaf ``j`` to split next (op index, flat neuron index), or None when
    none is left (:func:`branch_choices` for one leaf)."""
    return branch_choices(bm, state, ops, [j], record, failing, fallback)[0]


def branch_choices(bm, state, ops: list[int], rows: list[int], record: dict[int, Tensor], failing: Tensor,
                   fallback) -> list[tuple[int, int] | None]:  # fmt: skip
    """The unstable neuron each leaf of ``rows`` should split next (op index, flat neuron index),
    None for a leaf with none left; scored for all of them at once (a per-leaf loop was 15% of
    a ReLU-splitting step on ACAS Xu). ``record``: the final pass's coefficients at each ReLU op
    ``(m, s, *shape)``; ``failing`` ``(m, s)``: rows still below the threshold;
    ``fallback(i, l, u)``: the scores ``(k, n_i)`` of an op without recorded coefficients."""
    if not rows:
        return []
    sel = torch.tensor(rows, device=failing.device)
    best_val = best_idx = best_op = None
    for i in ops:
        l, u = (t[sel].flatten(1) for t in state.pre[i])
        unstable = (l < 0) & (u > 0)
        if i in record:
            lam = record[i][sel]
            lam = (lam * failing[sel].reshape(*failing[sel].shape, *[1] * (lam.dim() - 2))).flatten(2)
            intercept = (
                -u * l / (u - l).clamp(min=1e-30)
            )  # the chord's intercept (ReLU; LeakyReLU scales it by 1 - a)
            score = (-lam.clamp(max=0)).sum(1) * intercept
        else:
            score = fallback(i, l, u)
        score = torch.where(unstable, score, torch.full_like(score, -torch.inf))
        val, idx = score.max(1)
        op = torch.full_like(idx, i)
        if best_val is None:
            best_val, best_idx, best_op = val, idx, op
        else:  # strictly better only: the earlier op wins ties
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx, best_op = torch.where(better, idx, best_idx), torch.where(better, op, best_op)
    found = torch.isfinite(best_val).tolist()
    pairs = zip(best_op.tolist(), best_idx.tolist())
    return [(i, k) if ok else None for ok, (i, k) in zip(found, pairs)]


__all__ = [
    "ALPHA_LR",
    "BETA_LR",
    "CARRY_BYTES",
    "LeafParams",
    "branch_choice",
    "branch_choices",
    "leaf_bound",
    "start_params",
]
