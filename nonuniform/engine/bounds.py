"""The bound engine: provable bounds of ``C @ f(x)`` over per-feature boxes.

Methods (see :data:`METHODS`):

* ``ibp`` -- interval bound propagation through the hidden layers; the affine tail after the last
  activation is applied to the spec exactly (never looser than plain IBP).
* ``fastlin`` -- backward linear bounds with parallel relaxation lines (Weng et al. 2018).
* ``crown`` -- backward linear bounds with CROWN's adaptive lower slopes (Zhang et al. 2018);
  intermediate (pre-activation) bounds are computed by the same backward pass.
* ``alpha-crown`` -- full alpha-CROWN (:mod:`~nonuniform.engine.alpha`): CROWN whose lower slopes of
  ReLU/LeakyReLU neurons are optimised by projected Adam, one slope set per bound target (every
  specification of the final pass and every row of an intermediate bound), starting from
  CROWN's slopes; the result is max'ed with CROWN's, so it is never looser. Sigmoid/Tanh keep
  CROWN's lines; rows below convolutions (patches) carry slopes under their patch.

Every linear method intersects each intermediate bound with the interval propagated from the
previous layer's (already intersected) bounds, and the final bound with the ``ibp`` bound, so
by induction no method is looser than ``ibp``. Intermediate CROWN bounds are computed only for
neurons whose relaxation depends on them (for ReLU: unstable neurons); a neuron's bounds are only
updated where it is unstable *for that sample*, so a sample's result never depends on the rest of
its batch.

Shapes: boxes are ``(batch, *input_shape)``; specs ``(batch, specs, classes)``; returned bounds
``(batch, specs)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..frontends.read import to_network
from ..ir.network import AffineOp, Network
from ..ir.ops import ProductOp
from ..relax.activations import TINY_WIDTH, LinearRelaxation
from ..relax.product import product_interval, relax_product
from .alpha import Slopes, initial_slopes, optimised_bound, sloped_bound
from .fusion import fused_inner
from .input_step import input_bound, input_chain
from .interval import clip_split, concretise, intersect
from .methods import METHODS, Method
from .specs import BoxError, check_box, check_transform_spec, margin_spec
from .tighten import tighten, uses_patches

__all__ = [
    "METHODS",
    "BoundState",
    "BoundedModel",
    "BoxError",
    "ENGINES",
    "check_box",
    "check_transform_spec",
    "compute_bounds",
    "margin_spec",
    "to_network",
]

#: Engines for model types with a representation of their own, registered by the module that
#: implements each (``recurrent`` registers SequenceClassifier; the package imports it), so this
#: module never imports them: ``BoundedModel(model)`` picks the engine.
ENGINES: dict[type, type] = {}


@dataclass
class BoundState:
    """What the forward sweep learned about one batch of boxes."""

    lower: Tensor
    upper: Tensor
    pre: dict[int, tuple[Tensor, Tensor]]  # input bounds of every nonlinear op, by op index
    relaxations: dict[int, LinearRelaxation]  # by op index (empty for ibp)
    intervals: dict[int, tuple[Tensor, Tensor]]  # output bounds of every op (-1: the box)
    infeasible: Tensor | None = None  # (batch,) with splits: the box misses the split half-spaces
    # ops whose input was tightened by backward rows (alpha-CROWN's slope targets): op index ->
    # elements of the largest patch row its slope rows use, 0 for dense rows
    row_targets: dict[int, int] = field(default_factory=dict)


class BoundedModel:
    """A model prepared for bounding at one input shape, dtype and device.

    Build once and call :meth:`bounds` many times (the box optimiser does); parameters are a
    detached copy, so rebuild after changing the model's weights. An ``nn.Sequential`` becomes a
    chain of ops, any other module a traced graph (:mod:`~nonuniform.frontends.fx_trace`), a
    :class:`~nonuniform.ir.graph_model.GraphModel` (ONNX) its own graph; a
    :class:`~nonuniform.modules.SequenceClassifier` gets the recurrent engine
    (:class:`~nonuniform.recurrent.engine.RecurrentBoundedModel`) with the same interface.
    """

    def __new__(cls, model: nn.Module, *args, **kwargs):
        if cls is BoundedModel:
            cls = next((engine for kind, engine in ENGINES.items() if isinstance(model, kind)), cls)
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.net = self._build(model, tuple(input_shape), dtype, device)
        self.num_classes = self.net.num_classes

    def _build(self, model: nn.Module, input_shape: tuple[int, ...], dtype, device) -> Network:
        """The model as the engine's representation (the recurrent subclass unrolls a graph)."""
        return to_network(model, input_shape, dtype, device)

    # -- forward sweep ------------------------------------------------------------------
    def propagate(
        self,
        lower: Tensor,
        upper: Tensor,
        method: str = "crown",
        splits: dict[int, Tensor] | None = None,
        slopes: Slopes | None = None,
        reuse: BoundState | None = None,
        prior: dict[int, tuple[Tensor, Tensor]] | None = None,
    ) -> BoundState:
        """Intermediate bounds and relaxations of every nonlinear op for the boxes: intervals forward
        op by op; a nonlinear op's input tightened by CROWN when an affine op computes it and it is
        not already exact. ``splits`` (:mod:`~nonuniform.proof.bab`): per ReLU-family op, int8 +1/-1
        where the branch assumes z >= 0 / z <= 0; ``slopes``: alpha-CROWN's per-row lower slopes;
        ``reuse``: a state of the same boxes whose bounds the other targets keep; ``prior``: op input
        bounds valid on boxes containing these (input splitting's parents): neurons they make
        stable need no CROWN row."""
        _check_method(method)
        mode = "fastlin" if method == "fastlin" else "crown"
        ops = self.net.ops
        iv: dict[int, tuple[Tensor, Tensor]] = {-1: (lower, upper)}
        exact = {-1: True}  # the interval is the exact range of an elementwise map of the box
        box = {-1: True}  # ... and those coordinates vary independently (a product of intervals)
        pre: dict[int, tuple[Tensor, Tensor]] = {}
        relax: dict[int, LinearRelaxation] = {}
        tightened: set[int] = set()
        targets: dict[int, int] = {}
        infeasible = None
        for i, op in enumerate(ops):
            if isinstance(op, AffineOp):
                iv[i] = op.interval(*(t for k in op.inputs for t in iv[k]))
                box[i] = all(box[k] for k in op.inputs) and not op.mixing
                exact[i] = all(box[k] for k in op.inputs) and (not op.mixing or len(op.inputs) == 1)
                continue
            if isinstance(op, ProductOp):
                ins = []
                for k in op.inputs:
                    l, u = iv[k] if reuse is None else reuse.intervals[k]
                    if (
                        method != "ibp"
                        and not exact[k]
                        and k not in tightened
                        and isinstance(ops[k], AffineOp)
                    ):
                        need = ((u - l) > TINY_WIDTH).reshape(l.shape[0], -1)
                        l, u = tighten(self, i, l, u, relax, lower, upper, iv, pre, 0, None, src=k, need=need)
                        iv[k] = (l, u)
                        tightened.add(k)
                    ins.append((l, u))
                (lx, ux), (ly, uy) = ins
                pre[i] = (lx, ux)
                if method != "ibp":
                    relax[i] = relax_product(lx, ux, ly, uy, mode)  # type: ignore[assignment]
                iv[i] = product_interval(lx, ux, ly, uy)
                box[i] = exact[i] = False
                continue
            src = op.inputs[0]
            l, u = iv[src] if prior is None or i not in prior else intersect(*iv[src], *prior[i])
            if method != "ibp" and not exact[src] and src not in tightened and isinstance(ops[src], AffineOp):
                patch_elems = uses_patches(self, i, relax, slopes is not None and i in slopes.inter)
                if reuse is not None and (slopes is None or i not in slopes.inter):
                    l, u = reuse.pre[i]
                else:
                    l, u = tighten(self, i, l, u, relax, lower, upper, iv, pre, patch_elems, slopes)
                targets[i] = uses_patches(self, i, relax, sloped=True)  # the kind of its slope rows
                iv[src] = (l, u)
                tightened.add(src)
            if splits is not None and i in splits:
                l, u, empty = clip_split(l, u, splits[i])
                infeasible = empty if infeasible is None else infeasible | empty
                iv[src] = (l, u)  # z's other consumers may use the branch's bounds too
            pre[i] = (l, u)
            if method != "ibp":
                relax[i] = op.relaxation.relax(l, u, mode)
            iv[i] = op.relaxation.interval(l, u)
            box[i] = exact[i] = False
        return BoundState(lower, upper, pre, relax, iv, infeasible, targets)

    def _affine_step(self, j: int, pending: dict[int, Tensor], bias: Tensor) -> Tensor:
        """Move the coefficients pending at affine op ``j`` to its inputs; returns the new bias."""
        op: AffineOp = self.net.ops[j]  # type: ignore[assignment]
        lam = pending.pop(j)
        term = op.bias_term(lam)
        if term is not None:
            bias = bias + term
        for k, lam_k in zip(op.inputs, op.backward_all(lam)):
            pending[k] = pending[k] + lam_k if k in pending else lam_k
        return bias

    def _fused_step(self, j: int, k: int, pending: dict[int, Tensor], relax: dict) -> Tensor:
        """Coefficients at ``ops[j]`` (a max-pool) moved past it and its input activation ``ops[k]``
        in one compact step (:meth:`~nonuniform.relax.pooling.PoolRelaxation.backward_through`)."""
        lam_in, term = relax[j].backward_through(pending.pop(j), relax[k])
        src = self.net.ops[k].inputs[0]
        pending[src] = pending[src] + lam_in if src in pending else lam_in
        return term

    def _backward(
        self,
        pending: dict[int, Tensor],
        start: int,
        relax: dict[int, LinearRelaxation],
        lower: Tensor,
        upper: Tensor,
        iv: dict[int, tuple[Tensor, Tensor]] | None,
        bias: Tensor,
        keep_input: bool = False,
        record: dict[int, Tensor] | None = None,
    ) -> Tensor:
        """Lower bound of ``sum_k pending[k] . (output of op k) + bias`` over the box (``keep_input``:
        the input's coefficients stay in ``pending[-1]``; ``record`` gets those met at relaxed ops).

        Ops are visited from ``start`` down in reverse topological order; coefficients that meet
        at an op with several consumers are summed. A nonlinear op with a relaxation in ``relax``
        passes its coefficients through its lines; one without is concretised against its
        output interval ``iv[j]`` (so ``relax={}`` gives the interval bound of the affine tail).
        """
        chain = [] if keep_input else input_chain(self.net)
        for j in range(start, -1, -1):
            if j not in pending:
                continue
            op = self.net.ops[j]
            if chain and j == chain[-1]:  # the affine ops that read the box, and the box
                bias = bias + input_bound(self.net, chain, pending.pop(j), lower, upper)
            elif isinstance(op, AffineOp):
                bias = self._affine_step(j, pending, bias)
            elif (k := fused_inner(self.net, j, relax)) is not None:  # max-pool over its activation
                bias = bias + self._fused_step(j, k, pending, relax)
            elif j in relax:
                lam = pending.pop(j)
                if record is not None:
                    record[j] = lam
                lam_in, term = relax[j].backward(lam)
                bias = bias + term
                for k, lam_k in zip(op.inputs, lam_in if isinstance(lam_in, list) else [lam_in]):
                    pending[k] = pending[k] + lam_k if k in pending else lam_k
            else:
                bias = bias + concretise(pending.pop(j), *iv[j])
        if -1 in pending and not keep_input:
            bias = bias + concretise(pending.pop(-1), lower, upper)
        return bias

    def backward(
        self,
        lam: Tensor,
        relax: dict[int, LinearRelaxation],
        lower: Tensor,
        upper: Tensor,
        iv: dict[int, tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """Lower bound of ``lam . f(x)`` over the box: (batch, specs)."""
        last = len(self.net.ops) - 1
        bias = torch.zeros(lam.shape[:2], dtype=lam.dtype, device=lam.device)
        return self._backward({last: lam}, last, relax, lower, upper, iv, bias)

    def linear_bound(self, lam: Tensor, state: BoundState) -> tuple[Tensor, Tensor]:
        """CROWN's ``lam . f(x) >= a . x + b`` on the boxes: a (batch, specs, *input), b (batch, specs)."""
        last, (lower, upper) = len(self.net.ops) - 1, state.intervals[-1]
        pending, bias = {last: lam}, torch.zeros(lam.shape[:2], dtype=lam.dtype, device=lam.device)
        bias = self._backward(pending, last, state.relaxations, lower, upper, None, bias, keep_input=True)
        a = pending.get(-1, torch.zeros(*lam.shape[:2], *lower.shape[1:], dtype=lam.dtype))
        return a.expand(lam.shape[0], *a.shape[1:]), bias

    # -- bounds of a specification --------------------------------------------------------
    def bounds(
        self,
        lower: Tensor,
        upper: Tensor,
        spec: Tensor | None = None,
        method: str = "crown",
        *,
        per_logit: bool = False,
        bound_upper: bool = True,
        alpha_steps: int = 20,
        alpha_lr: float = 0.1,
        state: BoundState | None = None,
        slopes: Slopes | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Lower and upper bounds of ``spec @ f(x)`` over the boxes: ``(batch, specs)`` each.

        ``per_logit=True`` bounds every logit separately and combines them by interval
        arithmetic (the mode of Liu et al. 2019); it is never tighter than the default.
        ``bound_upper=False`` skips the upper bound (half the work) and returns ``None`` for it.
        ``slopes`` (alpha-crown, :class:`~nonuniform.engine.alpha.Slopes` for the lower bounds of
        ``spec``): where the slope optimisation starts; with ``alpha_steps=0`` the bound is the
        single pass with these slopes, differentiable in them (the box optimiser's joint mode).
        """
        _check_method(method)
        spec = self.default_spec(lower, upper) if spec is None else self._check_spec(spec, lower)
        if per_logit:
            check_transform_spec(
                getattr(self.net, "output_transform", None), torch.eye(self.num_classes)[None]
            )
            eye = torch.eye(self.num_classes, dtype=lower.dtype, device=lower.device)
            lo, hi = self.bounds(
                lower,
                upper,
                eye.expand(lower.shape[0], -1, -1),
                method,
                alpha_steps=alpha_steps,
                alpha_lr=alpha_lr,
                state=state,
            )
            pos, neg = spec.clamp(min=0), spec.clamp(max=0)
            lb = torch.einsum("bsk,bk->bs", pos, lo) + torch.einsum("bsk,bk->bs", neg, hi)
            ub = torch.einsum("bsk,bk->bs", pos, hi) + torch.einsum("bsk,bk->bs", neg, lo)
            return lb, (ub if bound_upper else None)

        s = spec.shape[1]
        if slopes is not None and bound_upper:
            raise ValueError("slopes= are per lower-bound specification: pass bound_upper=False")
        lam = torch.cat([spec, -spec], 1) if bound_upper else spec
        out = self._lower(lam, lower, upper, method, alpha_steps, alpha_lr, state, slopes)
        return out[:, :s], (-out[:, s:] if bound_upper else None)

    def _lower(
        self,
        lam: Tensor,
        lower: Tensor,
        upper: Tensor,
        method: str,
        alpha_steps: int,
        alpha_lr: float,
        state: BoundState | None,
        slopes: Slopes | None = None,
    ) -> Tensor:
        """Lower bounds of ``lam @ f(x)``: (batch, specs). The model-specific part of :meth:`bounds`."""
        if state is None:
            state = self.propagate(lower, upper, method)
        out = self.backward(lam, {}, lower, upper, state.intervals)
        if method != "ibp":
            out = torch.maximum(out, self.backward(lam, state.relaxations, lower, upper))
        if method == "alpha-crown":
            if slopes is not None and alpha_steps <= 0:
                out = torch.maximum(out, sloped_bound(self, lam, lower, upper, slopes, reuse=state))
            else:
                out = torch.maximum(out, optimised_bound(self, lam, state, alpha_steps, alpha_lr, slopes)[0])
        return out

    def start_slopes(self, lower: Tensor, upper: Tensor, specs: int) -> Slopes:
        """alpha-CROWN's parameters at CROWN's values on these boxes (the joint optimiser's start)."""
        return initial_slopes(self, self.propagate(lower, upper), specs)

    # -- specs --------------------------------------------------------------------------
    def predict(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net.forward(x).argmax(1)

    def default_spec(self, lower: Tensor, upper: Tensor) -> Tensor:
        pred = self.predict(((lower + upper) / 2).detach())
        return margin_spec(pred, self.num_classes).to(lower.dtype)

    def _check_spec(self, spec: Tensor, lower: Tensor) -> Tensor:
        spec = torch.as_tensor(spec).to(dtype=lower.dtype, device=lower.device)
        if spec.dim() == 2:
            spec = spec.expand(lower.shape[0], -1, -1)
        if spec.dim() != 3 or spec.shape[0] != lower.shape[0] or spec.shape[2] != self.num_classes:
            raise ValueError(
                f"spec must be shaped (specs, {self.num_classes}) or (batch={lower.shape[0]}, "
                f"specs, {self.num_classes}); got {tuple(spec.shape)}"
            )
        check_transform_spec(getattr(self.net, "output_transform", None), spec)
        return spec


def _check_method(method: str) -> None:
    Method.parse(method)


def compute_bounds(
    model: nn.Module,
    lower: Tensor,
    upper: Tensor,
    spec: Tensor | None = None,
    method: str = "crown",
    **kwargs,
) -> tuple[Tensor, Tensor | None]:
    """Provable bounds ``(lb, ub)``, each ``(batch, specs)``, of ``spec @ model(x)`` for all x
    with ``lower <= x <= upper``.

    ``spec=None`` means the margins ``f_c - f_j`` of the class ``c`` the model predicts at the box
    centre against every other class ``j``, in class order. Differentiable in ``lower`` and
    ``upper``. Keyword options: ``per_logit``, ``bound_upper``, ``alpha_steps``, ``alpha_lr``
    (see :meth:`BoundedModel.bounds`). Computation runs in the dtype and on the device of
    ``lower``.
    """
    lower, upper = check_box(lower, upper)
    bm = BoundedModel(model, tuple(lower.shape[1:]), lower.dtype, lower.device)
    return bm.bounds(lower, upper, spec, method, **kwargs)
