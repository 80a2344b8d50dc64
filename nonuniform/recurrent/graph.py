"""A SequenceClassifier unrolled for one input shape into nodes in topological order (see
:mod:`~nonuniform.recurrent.engine` for the node kinds and how they are bounded)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..frontends.sequential import read_sequential
from ..ir.network import Activation, AffineOp, UnsupportedModelError
from ..modules import SequenceClassifier
from ..relax.activations import (
    Identity,
    PiecewiseLinear,
    Relaxation,
    Sigmoid,
    Tanh,
)
from ..relax.gates import Product

Weight = Tensor | float | AffineOp

#: Largest hidden size whose steps are fused (:class:`Cell`). Measured on an LSTM at batch 25
#: (experiments/results/recurrent.md, commit d4b7093): hidden 16 1.2-1.5x faster with the gradient,
#: 1.1-1.6x without; from 24 on a wash (0.9-1.07x): the stacked selections are then large
#: enough to be memory-bound, and the node-by-node walk's smaller temporaries do as well.
FUSED_MAX_HIDDEN = 16


@dataclass
class Ref:
    """Elements ``[start, stop)`` of node ``node``'s output."""

    node: int
    start: int
    stop: int


@dataclass
class Node:
    name: str
    size: int
    consumers: list[int] = field(default_factory=list, init=False)


@dataclass
class InputNode(Node):
    step: int = 0


@dataclass
class LinearNode(Node):
    terms: list[tuple[Ref, Weight]] = field(default_factory=list)
    bias: Tensor | None = None
    tighten: bool = False  # set by the graph builder


@dataclass
class ActNode(Node):
    src: Ref | None = None
    relaxation: Relaxation | None = None


@dataclass
class Cell:
    """One LSTM or GRU time step of one layer: nodes ``first..last`` (contiguous; ``last`` is the
    state h_t), crossed by one fused backward step (:mod:`~nonuniform.recurrent.cells`). A simple RNN step
    (two nodes) is as fast node by node."""

    kind: str  # "lstm" or "gru"
    first: int
    last: int
    inputs: list[Ref]
    h_prev: Ref
    #: ``[W_x | W_h | b]`` with one row per gate coefficient of the kernel (lstm: i, f, g, o;
    #: gru: r, z, n, and W_hn h' + b_hn)
    weight: Tensor
    #: the nonlinear nodes, in the order the kernel reads their planes
    relaxed: tuple[int, ...]
    c: int = -1  # LSTM: the node of c_t
    c_prev: Ref | None = None


@dataclass
class ProductNode(Node):
    x: Ref | None = None
    y: Ref | None = None
    product: Product | None = None


def _apply(w: Weight, v: Tensor) -> Tensor:
    if isinstance(w, AffineOp):
        return w.forward(v)
    return w * v if isinstance(w, float) else F.linear(v, w)


def _apply_abs(w: Weight, r: Tensor) -> Tensor:
    if isinstance(w, AffineOp):
        return w.forward_abs(r)
    return abs(w) * r if isinstance(w, float) else F.linear(r, w.abs())


def _transpose(w: Weight, lam: Tensor) -> Tensor:
    if isinstance(w, AffineOp):
        return w.backward(lam)
    if isinstance(w, float):
        return lam if w == 1.0 else lam * w  # sums of gate products: no copy
    return lam @ w


class Graph:
    """A SequenceClassifier unrolled for one input shape; parameters copied to dtype/device."""

    def __init__(self, model: SequenceClassifier, input_shape: tuple[int, ...], dtype, device) -> None:
        rnn = model.rnn
        self.input_shape = tuple(input_shape)
        self.dtype, self.device = dtype, device
        d, n_in = rnn.input_size, math.prod(self.input_shape)
        if n_in % d:
            raise UnsupportedModelError(
                f"layer 'rnn' ({type(rnn).__name__}) has input_size={d}, but inputs of shape "
                f"{self.input_shape} hold {n_in} values per sample, not a multiple of {d}"
            )
        self.steps, self.features = n_in // d, d
        self.nodes: list[Node] = []
        self.cells: dict[int, Cell] = {}  # by the index of their last node
        # seq[t]: the pieces whose concatenation is the input of step t (two for a bidirectional
        # layer below: its forward and backward states).
        seq = [[Ref(self._add(InputNode(f"input.t{t}", d, step=t)), 0, d)] for t in range(self.steps)]
        for layer in range(rnn.num_layers):
            outs = [self._layer(rnn, layer, seq, reverse) for reverse in range(1 + rnn.bidirectional)]
            seq = [[out[t] for out in outs] for t in range(self.steps)]
        # The head reads the forward state after the last step and the backward one after the first.
        last = [seq[-1][0]] + ([seq[0][1]] if rnn.bidirectional else [])
        self.output = self._head(model.head, self._concat("rnn.out", last))
        for k, node in enumerate(self.nodes):
            for ref in self._sources(node):
                self.nodes[ref.node].consumers.append(k)
        for node in self.nodes:
            if isinstance(node, LinearNode):
                feeds_nonlinear = any(not isinstance(self.nodes[c], LinearNode) for c in node.consumers)
                only_inputs = all(
                    isinstance(self.nodes[r.node], InputNode)
                    or (isinstance(self.nodes[r.node], LinearNode) and not self.nodes[r.node].terms)
                    for r, _ in node.terms
                )
                # c * (one source) is exact from the source's (already tightened) interval.
                scaled_copy = len(node.terms) == 1 and isinstance(node.terms[0][1], float)
                node.tighten = feeds_nonlinear and not only_inputs and not scaled_copy
        self.num_classes = self.nodes[self.output].size
        self.cells = {k: cell for k, cell in self.cells.items() if self._closed(cell)}

    def _closed(self, cell: Cell) -> bool:
        """Whether only h_t (and an LSTM's c_t) are read from outside the cell: the fused step
        then sees every coefficient that reaches the cell (true for every graph built here)."""
        inside = range(cell.first, cell.last + 1)
        return all(
            all(c in inside for c in self.nodes[k].consumers) for k in inside if k not in (cell.last, cell.c)
        )

    def tape_bytes_per_sample(self, element_bytes: int = 4) -> int:
        """Estimated autograd memory of one differentiable bound per sample.

        Each intermediate CROWN pass from node k carries 2 * size_k rows through every earlier
        node; about 2.0-2.4 tensors of (rows, node size) per visit stay on the tape (measured on
        RNN/LSTM/GRU at 28 steps: lstm:32 takes 0.36 GB per sample). 3 gives a margin.
        """
        total, prefix = 0, 0
        for node in self.nodes:
            if isinstance(node, LinearNode) and node.tighten:
                total += 2 * node.size * prefix
            prefix += node.size
        return 3 * element_bytes * total

    # -- building ---------------------------------------------------------------------------
    def _add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def _param(self, rnn: nn.Module, name: str) -> Tensor | None:
        p = getattr(rnn, name, None)
        return None if p is None else p.detach().to(dtype=self.dtype, device=self.device)

    def _linear(self, name: str, terms: list[tuple[Ref, Weight]], *biases: Tensor | None) -> Ref:
        """A linear node; its size is the first term's output size, its bias the sum of biases."""
        present = [b for b in biases if b is not None]
        bias = sum(present[1:], present[0]) if present else None
        ref, w = terms[0]
        size = w.shape[0] if isinstance(w, Tensor) else ref.stop - ref.start
        return Ref(self._add(LinearNode(name, size, terms=terms, bias=bias)), 0, size)

    def _product(self, name: str, x: Ref, y: Ref, q: Relaxation) -> Ref:
        size = x.stop - x.start
        return Ref(self._add(ProductNode(name, size, x=x, y=y, product=Product(Sigmoid(), q))), 0, size)

    def _concat(self, name: str, pieces: list[Ref]) -> Ref:
        """One Ref for the concatenation of ``pieces`` (itself when there is one piece)."""
        if len(pieces) == 1:
            return pieces[0]
        sizes = [r.stop - r.start for r in pieces]
        eye = torch.eye(sum(sizes), dtype=self.dtype, device=self.device)
        cols = torch.split(eye, sizes, 1)  # (total, size_i): places piece i in the concatenation
        return self._linear(name, list(zip(pieces, cols)))

    def _layer(self, rnn: nn.Module, layer: int, seq: list[list[Ref]], reverse: int = 0) -> list[Ref]:
        """The nodes of one layer and direction; returns the state after each time step t."""
        h_size = rnn.hidden_size
        sfx = f"l{layer}" + ("_reverse" if reverse else "")
        w_ih, w_hh = self._param(rnn, f"weight_ih_{sfx}"), self._param(rnn, f"weight_hh_{sfx}")
        b_ih, b_hh = self._param(rnn, f"bias_ih_{sfx}"), self._param(rnn, f"bias_hh_{sfx}")
        zero = torch.zeros(h_size, dtype=self.dtype, device=self.device)
        # The zero initial state is a constant node (no terms): uniform code for every step.
        h = Ref(self._add(LinearNode(f"rnn.{sfx}.h0", h_size, bias=zero)), 0, h_size)
        c = h
        out: dict[int, Ref] = {}
        H = h_size

        def part(w: Tensor | None, k: int, width: int = 1) -> Tensor | None:
            """Rows of gate k (and the next width - 1 gates) of a stacked weight or bias."""
            return None if w is None else w[k * H : (k + width) * H]

        def inp(pieces: list[Ref], w: Tensor) -> list[tuple[Ref, Weight]]:
            """Terms ``w @ concat(pieces)``: w's columns split by piece."""
            sizes = [r.stop - r.start for r in pieces]
            return list(zip(pieces, (c.contiguous() for c in torch.split(w, sizes, 1))))

        fused = isinstance(rnn, (nn.LSTM, nn.GRU)) and H <= FUSED_MAX_HIDDEN
        weight = self._cell_weight(rnn, w_ih, w_hh, b_ih, b_hh) if fused else None

        order = range(len(seq) - 1, -1, -1) if reverse else range(len(seq))
        for t in order:
            xs, at = seq[t], f"rnn.{sfx}.t{t}"
            first, h_prev, c_prev = len(self.nodes), h, c
            if isinstance(rnn, nn.LSTM):  # gates i, f, g, o
                g = self._linear(f"{at}.gates", [*inp(xs, w_ih), (h, w_hh)], b_ih, b_hh)
                i_, f_, g_, o_ = (Ref(g.node, k * H, (k + 1) * H) for k in range(4))
                fc = self._product(f"{at}.f*c", f_, c, Identity())
                ig = self._product(f"{at}.i*g", i_, g_, Tanh())
                c = self._linear(f"{at}.c", [(fc, 1.0), (ig, 1.0)])
                h = self._product(f"{at}.h", o_, c, Tanh())
            elif isinstance(rnn, nn.GRU):  # gates r, z, n
                terms = [*inp(xs, part(w_ih, 0, 2)), (h, part(w_hh, 0, 2))]
                rz = self._linear(f"{at}.rz", terms, part(b_ih, 0, 2), part(b_hh, 0, 2))
                r_, z_ = Ref(rz.node, 0, H), Ref(rz.node, H, 2 * H)
                b_hn = part(b_hh, 2) if b_hh is not None else zero
                hn = self._linear(f"{at}.hn", [(h, part(w_hh, 2))], b_hn)
                rhn = self._product(f"{at}.r*hn", r_, hn, Identity())
                n = self._linear(f"{at}.n", [*inp(xs, part(w_ih, 2)), (rhn, 1.0)], part(b_ih, 2))
                neg_z = self._linear(f"{at}.-z", [(z_, -1.0)])
                # h' = (1 - sigmoid(z)) tanh(n) + sigmoid(z) h, and 1 - sigmoid(z) = sigmoid(-z).
                zn = self._product(f"{at}.(1-z)*n", neg_z, n, Tanh())
                zh = self._product(f"{at}.z*h", z_, h, Identity())
                h = self._linear(f"{at}.h", [(zn, 1.0), (zh, 1.0)])
            else:
                pre = self._linear(f"{at}.pre", [*inp(xs, w_ih), (h, w_hh)], b_ih, b_hh)
                act = Tanh() if rnn.nonlinearity == "tanh" else PiecewiseLinear(0.0)
                h = Ref(self._add(ActNode(f"{at}.h", H, src=pre, relaxation=act)), 0, H)
            if fused and isinstance(rnn, nn.LSTM):  # planes of o*tanh(c), f*c', i*g
                self.cells[h.node] = Cell(
                    "lstm",
                    first,
                    h.node,
                    list(xs),
                    h_prev,
                    weight,
                    (h.node, first + 1, first + 2),
                    c.node,
                    c_prev,
                )
            elif fused:  # GRU: planes of (1-z)*n, z*h', r*hn
                self.cells[h.node] = Cell(
                    "gru", first, h.node, list(xs), h_prev, weight, (first + 5, first + 6, first + 2)
                )
            out[t] = h
        return [out[t] for t in range(len(seq))]

    def _cell_weight(self, rnn: nn.Module, w_ih: Tensor, w_hh: Tensor, b_ih, b_hh) -> Tensor:
        """The fused backward step's ``[W_x | W_h | b]`` (see :attr:`Cell.weight`)."""
        H, like = rnn.hidden_size, {"dtype": self.dtype, "device": self.device}
        b_i = b_ih if b_ih is not None else torch.zeros(w_ih.shape[0], **like)
        b_h = b_hh if b_hh is not None else torch.zeros(w_ih.shape[0], **like)
        w_x, w_s, b_s = w_ih, w_hh, b_i + b_h
        if isinstance(rnn, nn.GRU):  # rows r, z | n (input part) | hn (state part)
            w_x = torch.cat([w_ih, torch.zeros(H, w_ih.shape[1], **like)])
            w_s = torch.cat([w_hh[: 2 * H], torch.zeros(H, H, **like), w_hh[2 * H :]])
            b_s = torch.cat([b_i[: 2 * H] + b_h[: 2 * H], b_i[2 * H :], b_h[2 * H :]])
        return torch.cat([w_x, w_s, b_s.unsqueeze(1)], 1)

    def _head(self, head: nn.Module, last: Ref) -> int:
        if isinstance(head, nn.Identity):
            return self._linear("output", [(last, 1.0)]).node
        net = read_sequential(head, (last.stop - last.start,), self.dtype, self.device)
        ref = last
        for op in net.ops:
            size = math.prod(op.out_shape)
            node: Node
            if isinstance(op, Activation):
                node = ActNode(f"head.{op.name}", size, src=ref, relaxation=op.relaxation)
            else:
                node = LinearNode(f"head.{op.name}", size, terms=[(ref, op)])
            ref = Ref(self._add(node), 0, size)
        if not isinstance(self.nodes[ref.node], LinearNode):
            ref = self._linear("output", [(ref, 1.0)])
        return ref.node

    @staticmethod
    def _sources(node: Node) -> list[Ref]:
        if isinstance(node, LinearNode):
            return [r for r, _ in node.terms]
        if isinstance(node, ActNode):
            return [node.src]  # type: ignore[list-item]
        if isinstance(node, ProductNode):
            return [node.x, node.y]  # type: ignore[list-item]
        return []

    # -- evaluation ---------------------------------------------------------------------------
    def steps_of(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.steps, self.features)

    def forward(self, x: Tensor) -> Tensor:
        return self.values(x)[self.output]

    def values(self, x: Tensor) -> list[Tensor]:
        """Every node's output at the points ``x`` (each ``(batch, node size)``)."""
        xs = self.steps_of(x)
        vals: list[Tensor] = []

        def get(r: Ref) -> Tensor:
            return vals[r.node][:, r.start : r.stop]

        for node in self.nodes:
            if isinstance(node, InputNode):
                v = xs[:, node.step]
            elif isinstance(node, LinearNode):
                v = node.bias.expand(x.shape[0], -1) if node.bias is not None else 0.0
                for r, w in node.terms:
                    v = v + _apply(w, get(r))
            elif isinstance(node, ActNode):
                v = node.relaxation.f(get(node.src))
            else:
                v = node.product.f(get(node.x), get(node.y))
            vals.append(v)
        return vals
