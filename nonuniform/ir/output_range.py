"""Output ranges as classification: certify ``lo_k <= f_k(x) <= hi_k`` with the margin machinery.

A regression model (one output, or several) has no prediction to keep, but a user may need its
output to stay in a range over a box (a control policy's action, a predicted dose). Appending one
fixed linear layer makes that a classifier: logit 0 is the constant 0 ("in range"), and each finite
end of each range adds a logit, ``f_k - hi_k`` or ``lo_k - f_k``. The margin of class 0 over each of
them is ``hi_k - f_k`` or ``f_k - lo_k``, so "class 0 is predicted on the whole box" is exactly
"every output stays in its range on the whole box". The layer is affine, so CROWN composes it
into the specification exactly: the bounds are those of the output rows themselves.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class OutputRange(nn.Module):
    """``model`` with an output-range head; class 0 means "every output in its range".

    ``lower`` / ``upper``: one number for every output or one per output; ``-inf`` / ``inf`` for
    an open end. Shapes: ``model`` maps ``(N, *input_shape) -> (N, outputs)``; this module maps
    to ``(N, 1 + number of finite ends)``.
    """

    def __init__(self, model: nn.Module, lower, upper, outputs: int) -> None:
        super().__init__()
        lo = _per_output(lower, outputs, "lower")
        hi = _per_output(upper, outputs, "upper")
        bad = [k for k in range(outputs) if not lo[k] < hi[k]]
        if bad:
            raise ValueError(
                f"output range of output {bad[0]}: lower {lo[bad[0]]} is not below upper {hi[bad[0]]}"
            )
        rows, bias, names = [torch.zeros(outputs)], [0.0], ["in range"]
        for k in range(outputs):
            if math.isfinite(hi[k]):
                rows.append(torch.eye(outputs)[k])
                bias.append(-hi[k])
                names.append(f"output {k} above {hi[k]:g}")
            if math.isfinite(lo[k]):
                rows.append(-torch.eye(outputs)[k])
                bias.append(lo[k])
                names.append(f"output {k} below {lo[k]:g}")
        if len(rows) == 1:
            raise ValueError("an output range needs at least one finite end")
        self.model = model
        self.lower, self.upper, self.class_names = lo, hi, tuple(names)
        self.head = nn.Linear(outputs, len(rows))
        self.head.weight.data = torch.stack(rows)
        self.head.bias.data = torch.tensor(bias)
        self.head.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.model(x)
        return self.head(y.to(self.head.weight.dtype))


def _per_output(value, outputs: int, which: str) -> list[float]:
    vals = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
    if len(vals) == 1:
        vals = vals * outputs
    if len(vals) != outputs or any(math.isnan(v) for v in vals):
        raise ValueError(
            f"the output range's {which} ends must be one number or one per output ({outputs} here); "
            f"got {value!r}"
        )
    return vals


__all__ = ["OutputRange"]
