"""The LP relaxation of a small ReLU chain on one input box, with a certificate checked by us.

Why: on ACAS Xu instances near a tie of two outputs (4_2 and 3_3 prop 2) input-splitting leaves
16-128x narrower than the box still miss by 1e-3 with CROWN, while the triangle LP over the same
intermediate bounds -- every unstable ReLU's upper chord and both lower lines at once, and the
best mix of a case's atoms -- refutes all of them (200 of 200 sampled open leaves, 2026-12-03).

What is trusted: nothing the solver says. HiGHS (``scipy.optimize.linprog``) solves the LP and
returns dual multipliers; any multipliers of the right signs give, by weak duality, a linear
function ``phi(v) <= sum_w lam_w g_w(v)`` on the LP's feasible set, where ``v`` = (input, every
pre- and post-activation) and ``g_w = d_w - c_w . y`` is atom w's refutation gap. Its minimum over
the variables' boxes (the leaf and the sound CROWN bounds ``pre`` of every neuron), computed here in
float64, divided by ``sum lam``, is a lower bound of ``max_w g_w`` on the leaf: the case is refuted
when it exceeds the margin. A wrong-signed multiplier is clipped to zero, which keeps the bound
valid; a poor solve only gives a weak bound.

Variables: x (n0), then per hidden layer z (pre-activation, m) and h (post, m), then t.
Constraints: ``z_k - W_k h_{k-1} = b_k``; per neuron ``z - h <= 0`` and ``h - s z <= q`` (the chord
``s = u / (u - l)``, ``q = -s l`` if unstable; ``s = 1, q = 0`` if active; ``s = q = 0`` if
inactive); per atom ``g_w(h_L) - t <= 0``; bounds ``x`` in the leaf, ``z`` in [l, u], ``h`` in
[max(l, 0), max(u, 0)]. Objective: min t.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from ..engine.bounds import BoundedModel
from ..ir.network import Activation, AffineOp
from ..relax.activations import PiecewiseLinear
from .milp import _dense_affine


class ReluChainLP:
    """The fixed structure of the LP for ``bm``'s network (a chain of affine ops and ReLUs);
    :meth:`refute` fills in one leaf's bounds. Raises ``ValueError`` for other networks."""

    def __init__(self, bm: BoundedModel) -> None:
        net = bm.net
        if not hasattr(net, "ops") or not net.is_chain:
            raise ValueError("the LP leaf needs a chain of affine layers and ReLUs")
        chains, acts, current, chain_in = [], [], [], tuple(net.input_shape)
        for i, op in enumerate(net.ops):
            if isinstance(op, AffineOp):
                current.append(op)
            elif (
                isinstance(op, Activation)
                and isinstance(op.relaxation, PiecewiseLinear)
                and op.relaxation.negative_slope == 0
            ):
                chains.append(_dense_affine(current, chain_in))
                acts.append(i)
                current, chain_in = [], op.out_shape
            else:
                raise ValueError(f"the LP leaf supports ReLU networks only; {op.where()}")
        chains.append(_dense_affine(current, chain_in))
        self.acts = acts
        self.n0 = chains[0][0].shape[1]
        sizes = [len(b) for _, b in chains[:-1]]
        self.sizes = sizes
        # variable offsets: x, (z_k, h_k) per layer, t
        self.z_at, self.h_at, at = [], [], self.n0
        for m in sizes:
            self.z_at.append(at)
            self.h_at.append(at + m)
            at += 2 * m
        self.t = at
        self.n_var = at + 1
        # equalities z_k - W_k h_{k-1} = b_k (h_0 = x)
        rows, cols, vals, r = [], [], [], 0
        prev_at, b_eq = 0, []
        for k, m in enumerate(sizes):
            w, b = chains[k]
            rr = r + np.arange(m)
            rows += [rr, np.repeat(rr, w.shape[1])]
            cols += [self.z_at[k] + np.arange(m), np.tile(prev_at + np.arange(w.shape[1]), m)]
            vals += [np.ones(m), -w.reshape(-1)]
            b_eq.append(b)
            r += m
            prev_at = self.h_at[k]
        self.a_eq = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, self.n_var)
        )
        self.b_eq = np.concatenate(b_eq)
        self.a_eq_t = self.a_eq[:, :-1].T.tocsr()  # without t's column, for the certificate
        self.w_out, self.b_out = chains[-1]
        self.last_at = prev_at
        # per neuron: z - h <= 0 and h - s z <= q (s filled per leaf); z, h indices of every neuron
        self.z_idx = np.concatenate([self.z_at[k] + np.arange(m) for k, m in enumerate(sizes)])
        self.h_idx = np.concatenate([self.h_at[k] + np.arange(m) for k, m in enumerate(sizes)])

    def refute(self, lo: np.ndarray, hi: np.ndarray, pre: list[tuple[np.ndarray, np.ndarray]],
               rows: np.ndarray, offsets: np.ndarray) -> float:  # fmt: skip
        """A certified lower bound of ``min over the leaf of max_w (d_w - c_w . y)``.

        ``lo``/``hi`` (n0,): the leaf; ``pre``: per ReLU op, sound bounds (l, u) of its input
        (flat, float64); ``rows`` (atoms, outputs) and ``offsets`` (atoms,): the case's atoms
        ``c_w . y >= d_w``. Returns -inf when the solve gives nothing usable."""
        l = np.concatenate([p[0] for p in pre])
        u = np.concatenate([p[1] for p in pre])
        n = len(l)
        unstable = (l < 0) & (u > 0)
        s = np.where(unstable, u / np.where(unstable, u - l, 1.0), np.where(l >= 0, 1.0, 0.0))
        q = np.where(unstable, -s * l, 0.0)
        k = len(offsets)
        # atoms: g_w(h) - t <= 0 with g_w = d_w - c_w (W h + b), i.e. -c_w W h - t <= -(d_w - c_w b)
        a_atoms = -rows @ self.w_out  # (k, m_last)
        e_atoms = offsets - rows @ self.b_out  # g_w = a_w . h + e_w
        ar = np.arange(n)
        ub_rows = np.concatenate(
            [ar, ar, n + ar, n + ar, np.repeat(2 * n + np.arange(k), a_atoms.shape[1] + 1)]
        )
        last = self.last_at + np.arange(a_atoms.shape[1])
        ub_cols = np.concatenate(
            [self.z_idx, self.h_idx, self.h_idx, self.z_idx, np.tile(np.append(last, self.t), k)]
        )
        atom_vals = np.concatenate([a_atoms, -np.ones((k, 1))], 1).reshape(-1)
        ub_vals = np.concatenate([np.ones(n), -np.ones(n), np.ones(n), -s, atom_vals])
        a_ub = sp.csr_matrix((ub_vals, (ub_rows, ub_cols)), shape=(2 * n + k, self.n_var))
        b_ub = np.concatenate([np.zeros(n), q, -e_atoms])
        v_lo, v_hi = self._var_bounds(lo, hi, l, u)
        c = np.zeros(self.n_var)
        c[self.t] = 1.0
        bounds = np.stack([np.append(v_lo, -np.inf), np.append(v_hi, np.inf)], 1)
        try:
            res = linprog(
                c, A_ub=a_ub, b_ub=b_ub, A_eq=self.a_eq, b_eq=self.b_eq, bounds=bounds, method="highs"
            )
        except ValueError:
            return -np.inf
        if res.status != 0:
            return -np.inf
        y_ub = np.minimum(res.ineqlin.marginals, 0.0)  # <= rows of a min problem: y <= 0
        y_eq = res.eqlin.marginals
        lam = -y_ub[2 * n :]
        total = lam.sum()
        if not total > 0:
            return -np.inf
        # phi(v) = sum_w lam_w g_w(v) - y_o . (A_o v - b_o) - y_eq . (A_eq v - b_eq), t dropped
        y_o = y_ub[: 2 * n]
        a_o = a_ub[: 2 * n, : self.t]
        coef = -(a_o.T @ y_o) - (self.a_eq_t @ y_eq)
        coef[last] += lam @ a_atoms
        const = lam @ e_atoms + y_o @ b_ub[: 2 * n] + y_eq @ self.b_eq
        value = np.minimum(coef * v_lo, coef * v_hi).sum() + const
        return float(value / total)

    def _split(self, flat: np.ndarray) -> list[np.ndarray]:
        return np.split(flat, np.cumsum(self.sizes)[:-1])

    def _var_bounds(self, lo, hi, l, u) -> tuple[np.ndarray, np.ndarray]:
        parts_lo, parts_hi = [lo], [hi]
        for lk, uk in zip(self._split(l), self._split(u)):
            parts_lo += [lk, np.maximum(lk, 0)]
            parts_hi += [uk, np.maximum(uk, 0)]
        return np.concatenate(parts_lo), np.concatenate(parts_hi)


def pre_lists(state_pre: dict, acts: list[int], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leaf ``k``'s flat float64 bounds of every ReLU input, in layer order."""
    return [(state_pre[i][0][k].reshape(-1).double().numpy(), state_pre[i][1][k].reshape(-1).double().numpy())
            for i in acts]  # fmt: skip


__all__ = ["ReluChainLP", "pre_lists"]
