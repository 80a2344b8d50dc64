"""Every supported operation, for PyTorch and ONNX: what ``nonuniform models --ops`` prints and the
README's table is generated from (``tests/frontends/test_catalogue.py`` keeps them equal)."""

from __future__ import annotations

from .activations import ACTIVATIONS

#: (operation, PyTorch modules / functions / methods, ONNX operators)
LAYERS: list[tuple[str, str, str]] = [
    ("linear map", "nn.Linear (any leading axes), F.linear", "Gemm, MatMul by a constant"),
    (
        "convolution",
        "nn.Conv1d, nn.Conv2d (stride, padding, dilation, groups / depthwise), F.conv2d",
        "Conv (1-D, 2-D)",
    ),
    (
        "normalisation",
        "nn.BatchNorm1d/2d (eval), nonuniform.Normalize, (x - mean) / std with buffers",
        "BatchNormalization, Sub/Div by constants",
    ),
    (
        "pooling",
        "nn.MaxPool1d/2d, nn.AvgPool1d/2d, F.max_pool2d, F.avg_pool2d, AdaptiveAvgPool2d (any output size), AdaptiveMaxPool2d (equal windows), x.mean(dims)",
        "MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean, ReduceMax (spatial)",
    ),
    (
        "layout",
        "flatten, view, reshape, squeeze, unsqueeze, permute, transpose, contiguous, torch.cat, torch.stack",
        "Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Shape->Gather->Concat chains",
    ),
    (
        "arithmetic",
        "+ and - of two computed tensors (residual blocks), + - * / by constants (broadcast, leading 1 allowed), +=",
        "Add, Sub, Mul, Div, Pad (constant)",
    ),
    ("no-ops", "nn.Dropout, nn.Identity, F.dropout, .clone(), .detach()", "Identity, Dropout, Constant"),
    (
        "output",
        "a final softmax / log_softmax over the classes (stripped for margins)",
        "Softmax, LogSoftmax (output)",
    ),
    (
        "recurrent",
        "nonuniform.SequenceClassifier(nn.RNN / nn.LSTM / nn.GRU, head)",
        "not supported (export the feedforward part)",
    ),
]
#: What is refused today, with the reason a user sees.
NOT_YET = (
    "LayerNorm, attention, products of two computed tensors (gating, squeeze-excitation), per-channel PReLU"
)


def rows() -> list[tuple[str, str, str]]:
    """Every supported operation: the layers, then each activation."""
    return LAYERS + [(f"activation: {m}" if m else "activation", f, o) for m, f, o in ACTIVATIONS]


def markdown() -> str:
    """The table in Markdown (the README's copy of it is checked against this)."""
    lines = ["| operation | PyTorch | ONNX |", "|---|---|---|"]
    lines += [f"| {a} | {b or '-'} | {c or '-'} |" for a, b, c in rows()]
    lines.append(f"\nNot supported yet (refused before any work, naming the layer): {NOT_YET}.")
    return "\n".join(lines)


__all__ = ["LAYERS", "NOT_YET", "markdown", "rows"]
