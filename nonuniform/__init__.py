"""nonuniform: certified non-uniform robustness regions for neural-network classifiers."""

from .bounds import METHODS, BoundedModel, compute_bounds, margin_spec
from .boxes import CertifiedBoxes, CertifyConfig, certify_boxes
from .data import load_dataset
from .distributed import RayBackend
from .layers import Normalize, SequenceClassifier
from .models import load_model
from .network import UnsupportedModelError
from .recurrent import RecurrentBoundedModel  # registers the recurrent engine with BoundedModel
from .runs import certify_run
from .threads import cap_threads, configure_threads
from .verify import VerifyReport, verify_boxes

cap_threads()

__all__ = [
    "METHODS",
    "BoundedModel",
    "RecurrentBoundedModel",
    "CertifiedBoxes",
    "CertifyConfig",
    "certify_boxes",
    "certify_run",
    "RayBackend",
    "load_dataset",
    "load_model",
    "Normalize",
    "SequenceClassifier",
    "UnsupportedModelError",
    "compute_bounds",
    "margin_spec",
    "VerifyReport",
    "verify_boxes",
    "configure_threads",
]
__version__ = "0.1.0"
