"""Intermediate bounds by backward rows: CROWN bounds of the neurons at a nonlinear op's input.

``bm`` is a :class:`~nonuniform.bounds.BoundedModel` (passed in: the engine calls this module).
Each sample gets backward rows only for *its own* neurons that need bounds (padded to the largest
count in the batch), so a sample's bounds never depend on its batch-mates. Rows are receptive-field
patches below a convolutional chain (:mod:`.patches`), dense maps otherwise; dense rows may carry
their own lower slopes at every ReLU below them (full alpha-CROWN, :mod:`.alpha_crown`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .alpha_crown import Slopes, row_relaxations
from .interval import intersect_rows
from .network import Activation, AffineOp
from .patches import patch_bounds, patch_size
from .relaxations import LinearRelaxation

#: Intermediate bounds of convolutional chains use patch rows; False forces dense rows (the tests
#: compare both).
PATCHES = True

#: Largest number of elements of one backward-pass tensor when computing intermediate bounds;
#: neurons are processed in chunks below it (about 1 GiB in float32).
MEMORY_BUDGET = 2**28


def uses_patches(bm, i: int, relax: dict[int, LinearRelaxation]) -> int:
    """Elements of the largest patch row below the input of ``ops[i]``; 0 for dense rows."""
    return patch_size(bm.net, bm.net.ops[i].inputs[0], relax) if PATCHES else 0


def tighten(
    bm,
    i: int,
    l: Tensor,
    u: Tensor,
    relax: dict[int, LinearRelaxation],
    lower: Tensor,
    upper: Tensor,
    iv: dict[int, tuple[Tensor, Tensor]],
    pre: dict[int, tuple[Tensor, Tensor]],
    patch_elems: int,
    slopes: Slopes | None = None,
) -> tuple[Tensor, Tensor]:
    """CROWN bounds for the neurons at the input of nonlinear op ``ops[i]`` that need them,
    intersected with the interval ``(l, u)``.

    The affine ops between ``ops[i]`` and the nonlinear ops below it do not depend on the sample,
    so they run once on the union of needed neurons (batch axis 1), and each sample gathers its
    rows from the result. With ``slopes`` holding a set for target ``i``, each row uses its own
    lower slopes at the ReLUs below (``pre``: their input bounds).
    """
    op: Activation = bm.net.ops[i]  # type: ignore[assignment]
    src = op.inputs[0]
    b = l.shape[0]
    need = op.relaxation.needs_bounds(l, u).reshape(b, -1)
    counts = need.sum(1)
    kmax = int(counts.max())
    if kmax == 0:
        return l, u
    n = need.shape[1]
    # Per-sample neuron lists: needed neurons first (stable sort keeps index order).
    order = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :kmax]
    valid = torch.arange(kmax, device=l.device)[None, :] < counts[:, None]
    lf, uf = l.reshape(b, -1), u.reshape(b, -1)
    if patch_elems:  # convolutional chain below: rows as receptive-field patches
        chunk = max(1, MEMORY_BUDGET // (2 * b * patch_elems))
        outs_l, outs_u = [], []
        for part in torch.arange(kmax, device=l.device).split(chunk):
            neuron = order[:, part] + 1
            out = patch_bounds(bm.net, src, torch.cat([neuron, -neuron], 1), relax, lower, upper)
            outs_l.append(out[:, : part.numel()])
            outs_u.append(-out[:, part.numel() :])
        return intersect_rows(l, u, lf, uf, order, valid, torch.cat(outs_l, 1), torch.cat(outs_u, 1))
    table = None if slopes is None else slopes.inter.get(i)
    union = need.any(0).nonzero().squeeze(1)
    k_u = union.numel()
    # Shared affine prefix: one-hot rows of the union, batch axis 1.
    rows = torch.zeros(k_u, n, dtype=l.dtype, device=l.device)
    rows[torch.arange(k_u, device=l.device), union] = 1.0
    lam_u = torch.cat([rows, -rows]).reshape(1, 2 * k_u, *bm.net.ops[src].out_shape)
    pending: dict[int, Tensor] = {src: lam_u}
    bias_u = torch.zeros(1, 2 * k_u, dtype=l.dtype, device=l.device)
    j = src
    while j >= 0 and (j not in pending or isinstance(bm.net.ops[j], AffineOp)):
        if j in pending:
            bias_u = bm._affine_step(j, pending, bias_u)
        j -= 1
    pos = torch.full((n,), 0, dtype=torch.long, device=l.device)
    pos[union] = torch.arange(k_u, device=l.device)
    pos = torch.where(valid, pos[order], 0)  # (b, kmax) row of each neuron in lam_u
    chunk = max(1, MEMORY_BUDGET // (2 * b * bm.net.max_width(src + 1)))
    outs_l, outs_u = [], []
    for part in torch.arange(kmax, device=l.device).split(chunk):
        sel = torch.cat([pos[:, part], pos[:, part] + k_u], 1)  # (b, 2k)
        gathered = {k: v[0][sel] for k, v in pending.items()}
        rel = relax if table is None else row_relaxations(bm.net.ops, relax, pre, table, order[:, part], n)
        out = bm._backward(gathered, j, rel, lower, upper, iv, bias_u[0][sel])
        outs_l.append(out[:, : part.numel()])
        outs_u.append(-out[:, part.numel() :])
    return intersect_rows(l, u, lf, uf, order, valid, torch.cat(outs_l, 1), torch.cat(outs_u, 1))
