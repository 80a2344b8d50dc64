"""Re-checking results and deciding properties: ``boxes`` (``verify_boxes``: fresh float64 bound,
attacks, MILP, branch-and-bound), ``vnnlib`` (parse VNN-LIB properties), ``decide`` (the complete
verifier's scheduler) and ``instances`` (a benchmark's instances, the competition's CSV)."""

from .boxes import VerifyReport, verify_boxes
from .decide import Result, VerifierConfig, decide
from .vnnlib import Property, VnnlibError, parse_vnnlib

__all__ = ["Property", "Result", "VerifierConfig", "VerifyReport", "VnnlibError", "decide", "parse_vnnlib",
           "verify_boxes"]  # fmt: skip
