"""nonuniform: certified non-uniform robustness regions for neural-network classifiers.

Sub-packages (see docs/ARCHITECTURE.md): ``ir`` (op graph), ``relax`` (relaxations), ``engine``
(bounds), ``frontends`` (fx, ONNX), ``recurrent``, ``certify`` (boxes), ``proof`` (BaB, MILP),
``attacks``, ``verify`` (re-checks, VNN-LIB), ``analysis``, ``report``, ``runs``, ``zoo``,
``runtime``. Importing the package changes nothing outside it (torch's threads included).
"""

import sys as _sys

from . import _legacy
from .certify.boxes import certify_boxes
from .certify.result import CertifiedBoxes
from .certify.settings import CertifyConfig, Method
from .engine.bounds import METHODS, BoundedModel, compute_bounds, margin_spec
from .ir.network import UnsupportedModelError
from .modules import Normalize, SequenceClassifier
from .recurrent.engine import RecurrentBoundedModel  # registers the recurrent engine with BoundedModel
from .runs.ray import RayBackend
from .runs.rundir import certify_run
from .runtime.allocator import configure_allocator
from .runtime.threads import configure_threads
from .verify.boxes import VerifyReport, verify_boxes
from .zoo.data import load_dataset
from .zoo.models import load_model

_legacy.register(_sys.modules[__name__])

__all__ = [
    "METHODS",
    "BoundedModel",
    "RecurrentBoundedModel",
    "CertifiedBoxes",
    "CertifyConfig",
    "Method",
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
    "configure_allocator",
    "configure_threads",
]
__version__ = "0.1.0"
