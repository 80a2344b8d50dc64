"""Any supported feedforward model as the engine's graph of ops: picks the front end."""

from __future__ import annotations

from torch import nn

from ..ir.graph_model import GraphModel
from ..ir.network import LinearOp, Network, UnsupportedModelError
from ..ir.output_range import OutputRange
from .layers import UnknownLayer
from .sequential import read_sequential


def to_network(model: nn.Module, input_shape: tuple[int, ...], dtype, device) -> Network:
    """A :class:`GraphModel` (ONNX) gives its own graph, an ``nn.Sequential`` of known layers is
    read as a chain, any other module (or a Sequential with a custom child) is traced with
    ``torch.fx``."""
    if isinstance(model, OutputRange):
        return _with_range_head(model, input_shape, dtype, device)
    if isinstance(model, GraphModel):
        return model.network(input_shape, dtype, device)
    if isinstance(model, nn.Sequential):
        try:
            return read_sequential(model, input_shape, dtype, device)
        except UnknownLayer:
            pass  # a custom child module: trace the whole model
    from .fx_trace import trace_network

    return trace_network(model, input_shape, dtype, device)


def _with_range_head(model: OutputRange, input_shape: tuple[int, ...], dtype, device) -> Network:
    """The wrapped model's graph with the output-range head as one more linear op."""
    inner = to_network(model.model, input_shape, dtype, device)
    if getattr(inner, "output_transform", None) is not None:
        raise UnsupportedModelError(
            f"the model ends in {inner.output_transform}, so its outputs are not the values an output "
            "range bounds; export the model without its final normalisation"
        )
    head = LinearOp("output range", "Linear", model.head.weight.detach(), model.head.bias.detach())
    head.inputs = [len(inner.ops) - 1]
    return Network.from_ops([*inner.ops, head], input_shape, dtype, device)
