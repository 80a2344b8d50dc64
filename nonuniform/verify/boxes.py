"""Re-checking certified boxes, independently of the optimiser that found them.

:func:`verify_boxes` takes a :class:`~nonuniform.certify.boxes.CertifiedBoxes` and the model, and for
every box reported certified checks that it is well formed (contains its input, lies inside the
recorded input domain), proves it again with a fresh float64 bound (no tape, no state shared
with the optimiser), attacks it (PGD with restarts and random corners) and, optionally, decides
it exactly by MILP (small ReLU chains). The CLI's ``verify`` prints the report.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..attacks.pgd import falsify_boxes
from ..certify.problem import domain_tensors
from ..certify.result import CertifiedBoxes
from ..certify.settings import CertifyConfig
from ..engine.bounds import compute_bounds, margin_spec

#: the file name of a verification record in a run directory
RECORD = "verify.json"


@dataclass
class VerifyReport:
    """Sample indices (positions in their data set) that failed each check."""

    boxes: int
    certified: int
    malformed: list[int] = field(default_factory=list)  # box misses its input or leaves the domain
    bound_failures: list[int] = field(default_factory=list)  # fresh float64 bound <= 0
    attack_failures: list[int] = field(default_factory=list)  # a counterexample was found
    milp: dict[int, str] = field(default_factory=dict)  # status per sample when MILP ran
    bab_proved: list[int] = field(default_factory=list)  # one bound failed, branch-and-bound proved

    @property
    def ok(self) -> bool:
        return not (
            self.malformed
            or self.bound_failures
            or self.attack_failures
            or any(s == "counterexample" for s in self.milp.values())
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def save_beside(self, boxes_file: str | Path) -> Path | None:
        """Keep the report as ``verify.json`` beside the boxes file it checked, where
        :func:`~nonuniform.report.html.write_report` finds it; None if that folder is read-only
        (the verdict is still printed: a record is a convenience, not the result)."""
        path = Path(boxes_file).parent / RECORD
        try:
            path.write_text(json.dumps(self.to_dict(), indent=2))
        except OSError:
            return None
        return path


def verify_boxes(
    model: nn.Module,
    boxes: CertifiedBoxes,
    *,
    attack_restarts: int = 5,
    attack_steps: int = 50,
    corners: int = 256,
    milp: bool = False,
    milp_time_limit: float = 60.0,
    bab: bool | None = None,
    bab_time: float | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every certified box of ``boxes`` against ``model`` (see the module docstring).

    ``bab``: boxes that one fresh bound cannot prove get a branch-and-bound proof in float64
    (:mod:`~nonuniform.proof.bab`, ``bab_time`` seconds each) before they count as bound failures. Default: on
    when the boxes were certified with ``bab=True`` (their growth was proved that way).
    """
    cert = np.nonzero(boxes.certified)[0]
    report = VerifyReport(boxes=len(boxes), certified=len(cert))
    if not len(cert):
        return report
    ids = boxes.indices
    lo = torch.tensor(boxes.lower[cert], dtype=torch.float64, device=device)
    hi = torch.tensor(boxes.upper[cert], dtype=torch.float64, device=device)
    x0 = torch.tensor(boxes.inputs[cert], dtype=torch.float64, device=device)
    bad = ~((lo <= x0) & (x0 <= hi)).flatten(1).all(1)
    domain = boxes.settings.get("domain")
    if domain is not None and boxes.settings.get("clip", True):
        d_lo, d_hi = domain_tensors(domain, x0[0])  # the same reading of the domain as certify's
        bad |= ~((lo >= d_lo) & (hi <= d_hi)).flatten(1).all(1)
    report.malformed = [int(ids[i]) for i in cert[bad.cpu().numpy()]]
    preds = torch.tensor(boxes.preds[cert], device=device)
    if boxes.settings.get("output_range") is not None:  # the same head the boxes were certified with
        rng = CertifyConfig.build(None, output_range=boxes.settings["output_range"])
        model = rng.for_output_range(model, x0[:1].float())
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        n_cls = int(model64(x0[:1]).shape[1])
        lb, _ = compute_bounds(
            model64,
            lo,
            hi,
            margin_spec(preds, n_cls).double(),
            method=boxes.settings.get("method", "crown"),
            bound_upper=False,
            # alpha-crown: the certify run's own proof procedure (steps and rate of its check)
            alpha_steps=int(boxes.settings.get("alpha_steps_check", 20)),
            alpha_lr=float(boxes.settings.get("alpha_lr", 0.1)),
        )
    failed = (~(lb.min(1).values > 0)).cpu().numpy()  # a NaN bound (overflow) proves nothing
    if (boxes.settings.get("bab", False) if bab is None else bab) and failed.any():
        from ..engine.bounds import BoundedModel
        from ..proof.bab import prove_boxes

        budget = bab_time if bab_time is not None else float(boxes.settings.get("bab_time", 30.0))
        sel = np.nonzero(failed)[0]
        bm64 = BoundedModel(model64, tuple(x0.shape[1:]), torch.float64, device)
        res = prove_boxes(bm64, lo[sel], hi[sel], margin_spec(preds[sel], n_cls).double(), 1e-12, budget)
        proved = res.proved.cpu().numpy()
        report.bab_proved = [int(ids[cert[i]]) for i in sel[proved]]
        failed[sel[proved]] = False
    report.bound_failures = [int(ids[i]) for i in cert[failed]]
    f = falsify_boxes(
        model, lo.float(), hi.float(), preds, restarts=attack_restarts, steps=attack_steps, corners=corners
    )
    report.attack_failures = [int(ids[i]) for i in cert[f.broken.cpu().numpy()]]
    if milp:
        from ..proof.milp import verify_box_milp

        net_cpu = copy.deepcopy(model).cpu()
        for i in cert:
            r = verify_box_milp(
                net_cpu,
                torch.tensor(boxes.lower[i]),
                torch.tensor(boxes.upper[i]),
                int(boxes.preds[i]),
                time_limit=milp_time_limit,
            )
            report.milp[int(ids[i])] = r.status
            if progress is not None:
                progress(1)
    return report


__all__ = ["VerifyReport", "verify_boxes"]
