"""Which ops the backward pass may cross together, in one compact step.

A max-pool's relaxation puts a nonzero coefficient on one input per window and row. When the
windows do not overlap and the pool's input is an elementwise activation read by nothing else,
the activation's backward step touches only those inputs, so both are crossed on the compact
``(batch, rows, C, windows)`` coefficients instead of a dense map of zeros
(:meth:`~nonuniform.relax.pooling.PoolRelaxation.backward_through`): the same numbers, ~20x
fewer elements below a 4x4 pool (verivital's Convnet_maxpool: most of its bound).
"""

from __future__ import annotations

from ..ir.network import Network
from ..relax.activations import LinearRelaxation
from ..relax.pooling import PoolRelaxation


def fused_inner(net: Network, j: int, relax: dict) -> int | None:
    """The activation op under max-pool ``ops[j]`` that its backward step may absorb, or None."""
    rel = relax.get(j)
    if not isinstance(rel, PoolRelaxation) or not rel.disjoint:
        return None
    cache = net.__dict__.setdefault("_fusable_inner", {})
    if j not in cache:  # structure only: the activation is the pool's input and nothing else's
        k = net.ops[j].inputs[0]
        sole = k >= 0 and len(net.ops[k].inputs) == 1 and net.consumers()[k] == [j]
        cache[j] = k if sole else None
    k = cache[j]
    return k if k is not None and isinstance(relax.get(k), LinearRelaxation) else None


__all__ = ["fused_inner"]
