"""Re-checking results and deciding properties: ``boxes`` (``verify_boxes``: fresh float64 bound,
attacks, MILP, branch-and-bound) and ``vnnlib`` (VNN-LIB properties: parse and decide)."""

from .boxes import VerifyReport, verify_boxes

__all__ = ["VerifyReport", "verify_boxes"]
