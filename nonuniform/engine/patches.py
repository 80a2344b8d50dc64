"""Intermediate CROWN bounds of convolutional layers with *patch* rows instead of dense rows.

The backward row of one neuron of a convolution's output is non-zero only on its receptive
field. Dense rows carry a whole feature map per neuron (on mnist-cnn-small, ~1,700 rows of
16x14x14 per sample); a patch row carries the receptive field only (16x4x4), anchored at the
neuron's position. Going down the ops below the tightened layer, a row stays one patch:

* a channel-wise affine op scales the patch per channel (its shift adds to the bias);
* an elementwise relaxation multiplies the patch by the slopes found at the patch's positions
  (read by ``unfold`` of the slope maps; positions outside the map read 0);
* a convolution's transpose turns a (C_out, h, w) patch into a (C_in, (h-1)s+k, (w-1)s+k) patch
  (a small transposed convolution per row); the anchor grid's stride multiplies by s and its
  offset becomes ``offset * s + padding``; positions that fall in the zero padding are masked;
* a residual add sends the patch to both branches; where the branches meet again (the block's
  input), their patches are zero-padded to the smallest window holding both and summed (both
  have the same anchor stride; a 1x1 strided shortcut gives a smaller window than the 3x3 path);
* the input box is read the same way as the slopes (``unfold`` of its centre and radius).

Same arithmetic as the dense rows, so the same bounds (to rounding; tested), at a fraction of
the memory and time. :func:`patch_bounds` returns None when some op below the tightened layer is
not one of these (max-pooling, flatten, concat) or a patch would not be smaller than its map;
the engine then uses dense rows.

Shapes: rows ``(batch, K, C, ph, pw)`` (K = rows per sample), anchors per row from its position
``(y, x)`` in the tightened map: ``(y * S - P, x * S - P)`` in the current map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ir.graph_ops import AddOp
from ..ir.ops import ChannelAffineOp, ConvOp
from ..relax.activations import LinearRelaxation
from ..relax.rows import lower_plus


def _subgraph(net, src: int, relax: dict) -> list[int] | None:
    """The ops below ``ops[src]`` (``src`` included) in descending index order -- every consumer
    before its inputs -- if all are patch-friendly: convolutions, channel affines, residual adds
    and relaxed elementwise ops, on (C, H, W) maps."""
    seen, stack = {src}, [src]
    while stack:
        j = stack.pop()
        op = net.ops[j]
        if len(op.out_shape) != 3:
            return None
        if isinstance(op, ConvOp):
            if tuple(op.dilation) != (1, 1):
                return None
        elif not isinstance(op, (ChannelAffineOp, AddOp)) and not isinstance(relax.get(j), LinearRelaxation):
            return None
        for k in op.inputs:
            if k >= 0 and k not in seen:
                seen.add(k)
                stack.append(k)
    order = sorted(seen, reverse=True)
    return order if any(isinstance(net.ops[k], ConvOp) for k in order) else None


def _conv_window(op: ConvOp, offset: tuple, size: tuple) -> tuple[tuple, tuple]:
    """Window (offset, size) of a patch after the transpose of ``op``; see the module docstring."""
    kh, kw = op.weight.shape[-2:]
    offset = (offset[0] * op.stride[0] + op.padding[0], offset[1] * op.stride[1] + op.padding[1])
    return offset, ((size[0] - 1) * op.stride[0] + kh, (size[1] - 1) * op.stride[1] + kw)


def _union(a: tuple, b: tuple) -> tuple[tuple, tuple]:
    """The smallest window holding windows ``a`` and ``b``, each ``(offset, size)`` (a window
    starts ``offset`` before its anchor)."""
    (oa, sa), (ob, sb) = a, b
    offset = tuple(max(x, y) for x, y in zip(oa, ob))
    size = tuple(o + max(za - xa, zb - xb) for o, xa, za, xb, zb in zip(offset, oa, sa, ob, sb))
    return offset, size


def _geometry(net, order: list[int], at: dict | None = None, fraction: float = 1.0) -> int:
    """The largest patch (elements per row), or 0 if a patch would cover ``fraction`` of its map
    or more (then dense rows are as good) or two branches meet with different strides. ``at``
    (if given) receives each op's window ``(offset, size, stride)`` at its output."""
    src = order[0]
    win: dict[int, tuple] = {src: ((0, 0), (1, 1), (1, 1))}  # offset, size, stride
    largest = net.ops[src].out_shape[0]
    for j in order:
        offset, size, stride = win.pop(j)
        if at is not None:
            at[j] = (offset, size, stride)
        op = net.ops[j]
        if isinstance(op, ConvOp):
            offset, size = _conv_window(op, offset, size)
            stride = (stride[0] * op.stride[0], stride[1] * op.stride[1])
        c, h, w = op.in_shape if isinstance(op, ConvOp) else op.out_shape
        if size[0] * size[1] >= fraction * h * w:
            return 0
        largest = max(largest, c * size[0] * size[1])
        for k in op.inputs:
            if k in win:
                if win[k][2] != stride:
                    return 0
                win[k] = (*_union(win[k][:2], (offset, size)), stride)
            else:
                win[k] = (offset, size, stride)
    return largest


def patch_size(net, src: int, relax: dict, fraction: float = 1.0) -> int:
    """Elements of the largest patch row below ``ops[src]``; 0 when patches do not apply or some
    patch covers ``fraction`` of its map or more."""
    order = _subgraph(net, src, relax)
    return 0 if order is None else _geometry(net, order, fraction=fraction)


def patch_windows(net, src: int, relax: dict) -> dict[int, tuple] | None:
    """Each op's patch window ``(offset, size, stride)`` at its output for rows at ``ops[src]``,
    or None when patches do not apply."""
    order = _subgraph(net, src, relax)
    at: dict[int, tuple] = {}
    return at if order is not None and _geometry(net, order, at) else None


def row_windows(
    net, src: int, windows: dict[int, tuple], maps: dict[int, Tensor], neurons: Tensor
) -> dict[int, Tensor]:
    """Per-row copies of per-neuron maps: for every ``j`` of ``maps`` (B, C, H, W), the values
    under the patch of the row of each neuron ``neurons`` (B, R) of ``ops[src]``: (B, R, C, ph,
    pw) (alpha-CROWN's starting slopes of patch rows, :mod:`~nonuniform.engine.alpha`)."""
    _, ho, wo = net.ops[src].out_shape
    out = {}
    for j, m in maps.items():
        offset, (ph, pw), stride = windows[j]
        out[j] = _windows(m, ph, pw, stride, offset, (ho, wo), neurons % (ho * wo))
    return out


def _windows(maps: Tensor, ph: int, pw: int, stride, offset, out_hw, pos: Tensor) -> Tensor:
    """Values of ``maps`` (B, C, H, W) under each row's patch: (B, K, C, ph, pw), 0 outside.

    ``pos`` (B, K) is each row's flat position in the tightened map of size ``out_hw``."""
    c, h, w = maps.shape[1:]
    (sy, sx), (oy, ox), (ho, wo) = stride, offset, out_hw
    extra_y = max(0, (ho - 1) * sy + ph - (h + oy))
    extra_x = max(0, (wo - 1) * sx + pw - (w + ox))
    padded = F.pad(maps, (ox, extra_x, oy, extra_y))
    cols = F.unfold(padded, (ph, pw), stride=(sy, sx))  # (B, C*ph*pw, L)
    n_x = (padded.shape[-1] - pw) // sx + 1
    col = (pos // wo) * n_x + pos % wo  # (B, K)
    n, k = col.shape
    # One row per (sample, window) then index_select: the rows come out in the patch layout
    # (a gather along the last axis would need a transposing copy, ~3x slower).
    table = cols.transpose(1, 2).expand(n, -1, -1).reshape(-1, cols.shape[1])  # (B*L, C*ph*pw)
    flat = (col + torch.arange(n, device=col.device)[:, None] * cols.shape[2]).reshape(-1)
    return table.index_select(0, flat).reshape(n, k, c, ph, pw)


#: Largest transposed convolution (input x output elements of one patch) applied as one matrix.
UNROLL_LIMIT = 2**22
#: Above this many entries the matrix is used only while an output patch is at most 8 kernels
#: large: the matrix does ``oh*ow / (kh*kw)`` times the convolution's work (resnet_2b's 11x11 ->
#: 23x23 stride-2 transpose: 59x, 213 ms as a matrix vs 94 ms as a channels-last convolution for
#: 7,568 patches; 2026-12-02).
UNROLL_SPARSE = 2**19


def _transpose(op: ConvOp, patch: Tensor) -> Tensor:
    """The transposed convolution of patches ``(N, C_out, ph, pw)``.

    Why a matrix: patches are tiny (e.g. 16x4x4) and there are tens of thousands of them, where
    ``conv_transpose2d`` spends its time in per-call overhead; as a dense (in x out) matrix --
    built once per op and patch size by transposing the unit patches -- it is one matmul (~10x
    faster on mnist-cnn-small). Large patches, and large ones whose matrix is mostly zeros, keep
    the convolution (channels-last: oneDNN's kernel is 2-3x faster there).
    """
    n, c, ph, pw = patch.shape
    kh, kw = op.weight.shape[-2:]
    oh, ow = (ph - 1) * op.stride[0] + kh, (pw - 1) * op.stride[1] + kw
    c_in = op.weight.shape[1] * op.groups
    entries = c * ph * pw * c_in * oh * ow
    if entries > UNROLL_LIMIT or (entries > UNROLL_SPARSE and oh * ow > 8 * kh * kw):
        patch = patch.contiguous(memory_format=torch.channels_last)
        return F.conv_transpose2d(patch, op.weight, None, op.stride, 0, 0, op.groups)
    cache = op.__dict__.setdefault("_unrolled", {})
    key = (ph, pw, patch.dtype, patch.device)
    if key not in cache:
        eye = torch.eye(c * ph * pw, dtype=patch.dtype, device=patch.device).reshape(-1, c, ph, pw)
        w = op.weight.detach().to(patch.dtype)
        cache[key] = F.conv_transpose2d(eye, w, None, op.stride, 0, 0, op.groups).reshape(c * ph * pw, -1)
    return (patch.reshape(n, -1) @ cache[key]).reshape(n, c_in, oh, ow)


def _push(pending: dict, k: int, patch: Tensor, offset: tuple, stride: tuple) -> None:
    """Add a patch to the coefficients pending at node ``k``, padding both to a common window
    where two branches of a residual block meet."""
    if k not in pending:
        pending[k] = (patch, offset, stride)
        return
    other, o2, _ = pending[k]
    new_offset, size = _union((offset, tuple(patch.shape[-2:])), (o2, tuple(other.shape[-2:])))

    def pad(t: Tensor, o: tuple) -> Tensor:
        top, left = new_offset[0] - o[0], new_offset[1] - o[1]
        return F.pad(t, (left, size[1] - t.shape[-1] - left, top, size[0] - t.shape[-2] - top))

    pending[k] = (pad(patch, offset) + pad(other, o2), new_offset, stride)


def _sloped(op, pre: tuple, alpha: Tensor, valid: Tensor, lo: Tensor, gap: Tensor, ph, pw, geo) -> tuple:
    """Lower-slope and slope-gap windows of a ReLU-family op with each valid row's own slopes
    ``alpha`` at its unstable neurons (stable ones keep their exact lines)."""
    l, u = pre
    unstable = _windows(((l < 0) & (u > 0)).to(lo.dtype), ph, pw, *geo) > 0
    a = op.relaxation.negative_slope
    sloped = torch.where(unstable & valid[:, :, None, None, None], alpha.clamp(a, 1.0), lo)
    return sloped, gap + lo - sloped  # a_up - a_lo with the new a_lo


def patch_bounds(
    net,
    src: int,
    rows: Tensor,
    relax: dict,
    lower: Tensor,
    upper: Tensor,
    alphas: dict[int, Tensor] | None = None,
    pre: dict | None = None,
    sloped_rows: Tensor | None = None,
) -> Tensor | None:
    """Lower bounds of ``sign * z[n]`` for the rows ``rows`` (B, K) = signed one-hot neuron
    indices into the output of ``ops[src]`` (value ``n + 1`` for +z_n, ``-(n + 1)`` for -z_n).
    Returns (B, K), or None when patches do not apply (see the module docstring).

    ``alphas`` (alpha-CROWN): per ReLU-family op ``j``, each row's own lower slopes under its
    patch, (B, K, C, ph, pw); they replace CROWN's at the neurons unstable by ``pre[j]`` in the
    rows marked in ``sloped_rows`` (B, K) (any value is clamped to the sound range, as the dense rows'
    relaxation does)."""
    order = _subgraph(net, src, relax)
    if order is None or not _geometry(net, order):
        return None
    b, k = rows.shape
    dt, dev = lower.dtype, lower.device
    c_src, ho, wo = net.ops[src].out_shape
    sign = torch.sign(rows).to(dt)
    neuron = rows.abs() - 1
    channel, pos = neuron // (ho * wo), neuron % (ho * wo)
    patch = torch.zeros(b, k, c_src, 1, 1, dtype=dt, device=dev)
    patch.scatter_(2, channel[:, :, None, None, None], sign[:, :, None, None, None])
    bias = torch.zeros(b, k, dtype=dt, device=dev)
    pending = {src: (patch, (0, 0), (1, 1))}
    for j in order:
        patch, offset, stride = pending.pop(j)
        op = net.ops[j]
        ph, pw = patch.shape[-2:]
        geo = (stride, offset, (ho, wo), pos)
        if isinstance(op, AddOp):
            for i, w in zip(op.inputs, op.weights):
                _push(pending, i, patch if w == 1.0 else w * patch, offset, stride)
            continue
        if isinstance(op, ChannelAffineOp):
            valid = _windows(torch.ones(1, 1, *op.out_shape[1:], dtype=dt, device=dev), ph, pw, *geo)
            shift = op.shift.reshape(-1, 1, 1).expand(op.out_shape[0], 1, 1)
            bias = bias + (patch * valid * shift).flatten(2).sum(-1)
            patch = patch * op.scale.reshape(-1, 1, 1).expand(op.out_shape[0], 1, 1)
        elif isinstance(op, ConvOp):
            if op.bias is not None:
                valid = _windows(torch.ones(1, 1, *op.out_shape[1:], dtype=dt, device=dev), ph, pw, *geo)
                bias = bias + ((patch * valid).sum((-2, -1)) * op.bias).sum(-1)
            patch = _transpose(op, patch.reshape(b * k, *patch.shape[2:]))
            patch = patch.reshape(b, k, *patch.shape[1:])
            offset, _ = _conv_window(op, offset, (ph, pw))
            stride = (stride[0] * op.stride[0], stride[1] * op.stride[1])
            ph, pw, geo = *patch.shape[-2:], (stride, offset, (ho, wo), pos)
            patch = patch * _windows(torch.ones(1, 1, *op.in_shape[1:], dtype=dt, device=dev), ph, pw, *geo)
        else:
            r: LinearRelaxation = relax[j]
            # Windows of a_lo, a_up - a_lo and the biases; lam' = lam * a_lo + min(lam, 0) * (a_up - a_lo)
            # (three passes, as in LinearRelaxation.backward).
            maps = [r.lower_slope[:, 0], (r.upper_slope - r.lower_slope)[:, 0], r.upper_bias[:, 0]]
            if not r.zero_lower_bias:
                maps += [r.lower_bias[:, 0]]
            win = [_windows(t, ph, pw, *geo) for t in maps]
            if alphas is not None and j in alphas:
                win[0], win[1] = _sloped(op, pre[j], alphas[j], sloped_rows, win[0], win[1], ph, pw, geo)
            neg = patch.clamp(max=0)
            if r.zero_lower_bias:
                bias = bias + torch.linalg.vecdot(neg.flatten(2), win[2].flatten(2))
            else:
                bias = bias + torch.linalg.vecdot(patch.flatten(2), win[3].flatten(2))
                bias = bias + torch.linalg.vecdot(neg.flatten(2), (win[2] - win[3]).flatten(2))
            patch = lower_plus(patch, win[0], neg, win[1])
        _push(pending, op.inputs[0], patch, offset, stride)
    patch, offset, stride = pending.pop(-1)
    ph, pw = patch.shape[-2:]
    twice = (upper + lower, upper - lower)  # 2 x centre, 2 x radius
    window_ = [_windows(t, ph, pw, stride, offset, (ho, wo), pos).flatten(2) for t in twice]
    patch = patch.flatten(2)
    return bias + (torch.linalg.vecdot(patch, window_[0]) - torch.linalg.vecdot(patch.abs(), window_[1])) / 2


__all__ = ["patch_bounds", "patch_size", "patch_windows", "row_windows"]
