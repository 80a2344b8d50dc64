"""Exact verification of a box for small ReLU networks: a mixed-integer linear program solved by
HiGHS (``scipy.optimize.milp``).

For each class j != c the MILP minimises f_c(x) - f_j(x) over the box, with every unstable ReLU
encoded by a binary variable and big-M constraints from sound pre-activation bounds (our CROWN in
float64). The box is robust iff every minimum is positive; a negative minimum comes with a point,
which is re-evaluated by a plain float64 forward pass before it is reported as a counterexample.
This checks the whole chain (relaxations, optimiser, finalisation) with nothing in common but
the pre-activation bounds used for big-M, which are themselves only required to be sound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from ..engine.bounds import BoundedModel
from ..ir.network import Activation, AffineOp
from ..relax.activations import PiecewiseLinear


@dataclass
class ExactResult:
    status: str  # "robust" | "counterexample" | "timeout"
    min_margin: float | None  # smallest f_c - f_j found (the optimum when status != timeout)
    counterexample: np.ndarray | None
    seconds: float


def _dense_affine(ops: list[AffineOp], in_shape) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset of a chain of affine ops, by pushing a basis through them."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    zero = torch.zeros(1, *in_shape, dtype=torch.float64)
    for op in ops:
        basis, zero = op.forward(basis), op.forward(zero)
    b = zero.reshape(-1)
    return (basis.reshape(n, -1) - b).T.numpy(), b.numpy()


def verify_box_milp(
    model: nn.Module,
    lower: torch.Tensor,
    upper: torch.Tensor,
    label: int,
    time_limit: float = 60.0,
    gap: float = 0.5,
) -> ExactResult:
    """Exactly decide whether every x in [lower, upper] (one sample, unbatched) is classified
    ``label``. Only ReLU networks (affine layers + ReLU) are supported.

    The solver stops once its proven (dual) bound is within the relative ``gap`` of its best
    point; the constant of the margin is a fixed variable of the objective, so with gap < 1 a
    positive best margin comes with a positive proven bound: the decision is exact, only
    ``min_margin`` (the best point found) may be above the true minimum. ``robust`` is reported
    only when every proven bound is > 0. A class whose LP relaxation (the same constraints, binaries
    relaxed to [0, 1]) is already > 0 is settled by it; its point is the LP's.
    """
    t0 = time.perf_counter()
    lower = torch.as_tensor(lower).detach().cpu().to(torch.float64)[None]  # HiGHS runs on the CPU
    upper = torch.as_tensor(upper).detach().cpu().to(torch.float64)[None]
    bm = BoundedModel(model, tuple(lower.shape[1:]), torch.float64)
    if not hasattr(bm.net, "ops"):
        raise ValueError("MILP verification supports feedforward ReLU networks only, not recurrent models")
    if not bm.net.is_chain:
        raise ValueError("MILP verification supports chains of layers only, not graphs with fan-out")
    ops = bm.net.ops
    for op in ops:
        if isinstance(op, Activation) and not (
            isinstance(op.relaxation, PiecewiseLinear) and op.relaxation.negative_slope == 0
        ):
            raise ValueError(f"MILP verification supports ReLU networks only; {op.where()}")
    state = bm.propagate(lower, upper, "crown")
    # Layers: affine chain -> ReLU -> affine chain -> ... -> affine chain (logits).
    chains, acts, current, shape = [], [], [], tuple(lower.shape[1:])
    chain_in = shape
    for i, op in enumerate(ops):
        if isinstance(op, AffineOp):
            current.append(op)
        else:
            chains.append(_dense_affine(current, chain_in))
            acts.append(i)
            current, chain_in = [], op.out_shape
    chains.append(_dense_affine(current, chain_in))

    # Variable layout: x, then per hidden layer z (pre), h (post), a (binaries, unstable only).
    n0 = lower[0].numel()
    lo_x, hi_x = lower[0].flatten().numpy(), upper[0].flatten().numpy()
    var_lo, var_hi, integ = [lo_x], [hi_x], [np.zeros(n0)]
    rows, rlo, rhi = [], [], []
    n_var = n0
    prev = np.arange(n0)  # indices of the previous layer's output variables

    def add_row(coefs: dict[int, float] | tuple, lo: float, hi: float) -> None:
        rows.append(coefs)
        rlo.append(lo)
        rhi.append(hi)

    for k, act_idx in enumerate(acts):
        w, b = chains[k]
        l, u = (t[0].flatten().numpy() for t in state.pre[act_idx])
        m = len(b)
        z = np.arange(n_var, n_var + m)
        h = np.arange(n_var + m, n_var + 2 * m)
        n_var += 2 * m
        var_lo += [l, np.maximum(l, 0)]
        var_hi += [u, np.maximum(u, 0)]
        integ += [np.zeros(m), np.zeros(m)]
        for j in range(m):  # z_j - W_j . prev = b_j
            add_row((np.concatenate([[z[j]], prev]), np.concatenate([[1.0], -w[j]])), b[j], b[j])
        unstable = np.nonzero((l < 0) & (u > 0))[0]
        a = np.arange(n_var, n_var + len(unstable))
        n_var += len(unstable)
        var_lo.append(np.zeros(len(unstable)))
        var_hi.append(np.ones(len(unstable)))
        integ.append(np.ones(len(unstable)))
        for j in range(m):
            if l[j] >= 0:  # active: h = z
                add_row((np.array([h[j], z[j]]), np.array([1.0, -1.0])), 0.0, 0.0)
            elif u[j] <= 0:  # inactive: h = 0 (its bounds already force it)
                continue
        for t, j in enumerate(unstable):
            # h >= z;  h <= z - l (1 - a);  h <= u a   (h >= 0 from its bounds)
            add_row((np.array([h[j], z[j]]), np.array([1.0, -1.0])), 0.0, np.inf)
            add_row((np.array([h[j], z[j], a[t]]), np.array([1.0, -1.0, -l[j]])), -np.inf, -l[j])
            add_row((np.array([h[j], a[t]]), np.array([1.0, -u[j]])), -np.inf, 0.0)
        prev = h

    w_out, b_out = chains[-1]
    one = n_var  # a variable fixed to 1 carries the objective's constant
    n_var += 1
    var_lo.append(np.ones(1))
    var_hi.append(np.ones(1))
    integ.append(np.zeros(1))
    a_mat = sp.lil_matrix((len(rows), n_var))
    for r, (idx, vals) in enumerate(rows):
        a_mat[r, idx] = vals
    constraints = LinearConstraint(a_mat.tocsr(), np.array(rlo), np.array(rhi))
    bounds = Bounds(np.concatenate(var_lo), np.concatenate(var_hi))
    integrality = np.concatenate(integ)

    worst, worst_x, timed_out = np.inf, None, False
    for j in range(len(b_out)):
        if j == label:
            continue
        c = np.zeros(n_var)
        c[prev] = w_out[label] - w_out[j]
        c[one] = b_out[label] - b_out[j]
        remaining = time_limit - (time.perf_counter() - t0)
        if remaining <= 0:
            timed_out = True
            break
        if integrality.any():  # the LP relaxation first: it settles most robust classes in milliseconds
            lp = milp(c, bounds=bounds, constraints=constraints, options={"time_limit": remaining})
            if lp.status == 0 and lp.fun > 0:
                x = torch.as_tensor(lp.x[:n0], dtype=torch.float64).reshape(lower.shape)
                with torch.no_grad():
                    logits = bm.net.forward(torch.minimum(torch.maximum(x, lower), upper))[0]
                worst = min(worst, float(logits[label] - logits[j]))  # a point's margin, as below
                continue
            remaining = time_limit - (time.perf_counter() - t0)
        res = milp(
            c,
            integrality=integrality,
            bounds=bounds,
            constraints=constraints,
            options={"time_limit": remaining, "mip_rel_gap": gap, "presolve": True},
        )
        if res.x is None:
            timed_out = True
            continue
        value = float(res.fun)
        proven = getattr(res, "mip_dual_bound", None)
        if proven is None and res.status == 0:  # no binaries: an LP, solved to optimality
            proven = value
        if res.status != 0 or proven is None or not (proven > 0 or value < 0):
            timed_out = True
        if value < worst:
            worst, worst_x = value, res.x[:n0].copy()
    seconds = time.perf_counter() - t0
    if worst_x is not None and worst < 0:
        x = torch.as_tensor(worst_x, dtype=torch.float64).reshape(lower.shape)
        x = torch.minimum(torch.maximum(x, lower), upper)
        with torch.no_grad():
            logits = bm.net.forward(x)[0]
        others = torch.cat([logits[:label], logits[label + 1 :]])
        real = float(logits[label] - others.max())
        if real < 0:
            return ExactResult("counterexample", real, x[0].numpy(), seconds)
        timed_out = True  # the solver's point does not reproduce: do not claim either way
    if timed_out:
        return ExactResult("timeout", None if worst == np.inf else worst, None, seconds)
    return ExactResult("robust", worst, None, seconds)
