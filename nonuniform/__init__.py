"""nonuniform: certified non-uniform robustness regions for neural-network classifiers."""

from .bounds import METHODS, BoundedModel, compute_bounds, margin_spec
from .layers import Normalize
from .network import UnsupportedModelError

__all__ = [
    "METHODS",
    "BoundedModel",
    "Normalize",
    "UnsupportedModelError",
    "compute_bounds",
    "margin_spec",
]
__version__ = "0.1.0"
