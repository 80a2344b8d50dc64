"""Certified explanations as results: the :class:`Explanations` file and its re-check.

Built by :class:`~nonuniform.analysis.sufficient.CertifiedExplainer`; ``verify`` re-proves a saved
file with :func:`verify_explanations` (a fresh float64 bound of every region, attacks inside it,
every contrastive witness re-run).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks.pgd import margin_objective, pgd_minimize
from ..engine.bounds import BoundedModel, margin_spec

#: Margin the float32 search must keep above 0 (the float64 proof then needs CHECK_MARGIN).
SEARCH_DELTA, CHECK_MARGIN = 1e-3, 1e-5


@dataclass
class Explanations:
    """Certified explanations of a set of inputs (arrays are numpy, sample-first)."""

    inputs: np.ndarray
    preds: np.ndarray
    sets: np.ndarray  # (N, *shape) bool: S, the fixed features
    lower: np.ndarray  # the proved region: S at the input, the rest over its range
    upper: np.ndarray
    margin: np.ndarray  # (N,) float64 proof of the region's smallest margin (>= CHECK_MARGIN: proved)
    proved: np.ndarray  # (N,) bool
    minimal: np.ndarray  # (N,) bool: freeing any one feature of S alone is not proved (each tested)
    calls: np.ndarray  # (N,) bound evaluations spent on the sample's traversal
    seconds: np.ndarray  # (N,) wall time of its batch / batch size
    witness_sets: np.ndarray  # (N, *shape) bool: the contrastive set T (empty when none was found)
    witnesses: np.ndarray  # (N, *shape): the counterexample moving only T (NaN when none)
    witness_preds: np.ndarray  # (N,) its predicted class (-1 when none)
    settings: dict = field(default_factory=dict)

    ARRAYS = ("inputs", "preds", "sets", "lower", "upper", "margin", "proved", "minimal", "calls", "seconds",
              "witness_sets", "witnesses", "witness_preds")  # fmt: skip

    def __len__(self) -> int:
        return len(self.preds)

    @property
    def size(self) -> np.ndarray:
        """Fraction of the features in S."""
        return self.sets.reshape(len(self), -1).mean(1)

    def save(self, path: str | Path) -> None:
        arrays = {k: getattr(self, k) for k in self.ARRAYS}
        np.savez_compressed(path, **arrays, settings=json.dumps(self.settings), kind="certified-explanations")

    @classmethod
    def load(cls, path: str | Path) -> Explanations:
        with np.load(path, allow_pickle=False) as z:
            if "kind" not in z.files or str(z["kind"]) != "certified-explanations":
                raise ValueError(
                    f"{path}: not a file of certified explanations (explain --certified writes them)"
                )
            missing = [k for k in cls.ARRAYS if k not in z.files]
            if missing:
                raise ValueError(f"{path}: certified explanations file without {', '.join(missing)}")
            return cls(**{k: z[k] for k in cls.ARRAYS}, settings=json.loads(str(z["settings"])))

    def summary(self) -> dict:
        ok = self.proved
        return {
            "samples": len(self),
            "proved": int(ok.sum()),
            "minimal": int((self.minimal & ok).sum()),
            "mean_size": float(self.size[ok].mean()) if ok.any() else None,
            "median_size": float(np.median(self.size[ok])) if ok.any() else None,
            "mean_calls": float(self.calls.mean()) if len(self) else None,
            "seconds_per_sample": float(self.seconds.mean()) if len(self) else None,
            "witnesses": int((self.witness_preds >= 0).sum()),
            "settings": self.settings,
        }


def _predictions(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted classes in float32 and in float64 (on a copy: the caller's model is untouched)."""
    with torch.no_grad():
        p32 = model(x.float()).argmax(1)
        p64 = copy.deepcopy(model).double()(x.double()).argmax(1)
    return p32, p64


def is_explanations_file(path: str | Path) -> bool:
    """True for a ``.npz`` written by :meth:`Explanations.save` (``verify`` takes both kinds)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "kind" in z.files and str(z["kind"]) == "certified-explanations"
    except Exception:  # a probe: damaged files get the boxes reader's one-line message
        return False


def verify_explanations(model: nn.Module, expl: Explanations, attack_restarts: int = 5) -> dict:
    """Re-prove every stored explanation in float64 (fresh bound of its region), attack its
    region (PGD with restarts: no point may change the prediction), and re-check every witness
    by a forward pass in float32 and float64. Returns a report (``ok`` True when all hold)."""
    method = expl.settings.get("method", "crown")
    x = torch.as_tensor(expl.inputs)
    lo, hi = (
        torch.as_tensor(expl.lower, dtype=torch.float64),
        torch.as_tensor(expl.upper, dtype=torch.float64),
    )
    preds = torch.as_tensor(expl.preds)
    ids = np.nonzero(expl.proved)[0]
    report = {"explanations": len(expl), "proved": len(ids), "bound_failures": [], "attack_failures": [],
              "witnesses": int((expl.witness_preds >= 0).sum()), "bad_witnesses": []}  # fmt: skip
    if len(ids):
        sel = torch.as_tensor(ids)
        bm = BoundedModel(model, tuple(x.shape[1:]), torch.float64)
        spec = margin_spec(preds[sel], bm.num_classes).double()
        with torch.no_grad():
            lb, _ = bm.bounds(lo[sel], hi[sel], spec, method, bound_upper=False)
        report["bound_failures"] = ids[(lb.min(1).values < CHECK_MARGIN).numpy()].tolist()
        _, val = pgd_minimize(
            margin_objective(model, preds[sel]), lo[sel].float(), hi[sel].float(), restarts=attack_restarts
        )
        report["attack_failures"] = ids[(val < 0).numpy()].tolist()
    has = np.nonzero(expl.witness_preds >= 0)[0]
    if len(has):
        p32, p64 = (p.numpy() for p in _predictions(model, torch.as_tensor(expl.witnesses[has])))
        moved = np.abs(expl.witnesses[has] - expl.inputs[has]) > 0
        outside = (moved & ~expl.witness_sets[has]).reshape(len(has), -1).any(1)
        bad = (p32 == expl.preds[has]) | (p64 == expl.preds[has]) | outside
        report["bad_witnesses"] = has[bad].tolist()
    report["ok"] = not (report["bound_failures"] or report["attack_failures"] or report["bad_witnesses"])
    return report


__all__ = ["CHECK_MARGIN", "SEARCH_DELTA", "Explanations", "is_explanations_file", "verify_explanations"]
