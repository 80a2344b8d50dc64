"""How many samples of a batch fit in memory, decided before the batch starts.

Samples are independent, so a smaller batch changes speed, never boxes. Two stages:

1. A quick upper estimate with no work (``net.tape_bytes_per_sample``: dense coefficients of
   every tightened row); a batch it fits in ``FREE_SHARE`` of the free memory starts at once.
2. Otherwise a measured one: one bound over the whole domain (every ReLU unstable: the most
   rows CROWN can need) for 1 and 2 samples, with the gradient the optimiser takes and as the
   float64 final proof, each under :class:`~nonuniform.runtime.memory.PeakMemory`. Their
   difference is the cost per sample, the rest is fixed; ``OVERHEAD`` covers the allocator.
   Measured on oval21's cifar_base_kw: 28 MB per sample estimated, 24 MB of live tensors per
   sample in a whole certify batch, 34 MB of resident memory per sample.

A batch whose allocation still fails is retried at half its size by ``certify_boxes``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.bounds import BoundedModel, margin_spec
from ..runtime.device import free_memory
from ..runtime.memory import PeakMemory, out_of_memory
from .problem import Problem
from .settings import CertifyConfig

#: Share of the free memory a batch may plan to use (the rest: the process, other programs).
FREE_SHARE = 0.6
#: Allocator overhead and fragmentation on top of the live tensors measured.
OVERHEAD = 1.5


class DoesNotFit(ValueError):
    """Not even one sample's bounds fit in the free memory."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one bound: ``fixed + per_sample * batch`` (live tensors, no overhead)."""

    fixed: int
    per_sample: int

    def batch_bytes(self, batch: int) -> int:
        return int(OVERHEAD * (self.fixed + self.per_sample * batch))


def measure_memory(bm: BoundedModel, check_bm: BoundedModel, x: Tensor, cfg: CertifyConfig) -> MemoryEstimate:
    """Peak memory of a certify batch: the optimiser's bound (with gradient) and the final
    proof's (``check_bm``, no tape) measured over the whole domain for 2 and 1 copies of
    ``x[0]``, the cost per sample times the boxes per sample a bound call may hold."""
    peaks = []
    for b in (2, 1):  # one-time allocations (caches) land in the larger: per-sample errs high
        x0 = x[:1].expand(b, *x.shape[1:]).clone()
        p = Problem(bm, x0, margin_spec(bm.predict(x0), bm.num_classes).to(x0.dtype), cfg)
        steps = min(cfg.alpha_steps or 0, 1)  # one slope step holds what every step holds
        lo = p.dl.expand_as(x0).clone().requires_grad_(True)
        hi = p.du.expand_as(x0).clone().requires_grad_(True)
        with PeakMemory() as grad_peak, torch.enable_grad():
            margins = p.margins(lo, hi, p.spec, alpha_steps=steps)
            torch.autograd.grad(margins.sum(), (lo, hi), allow_unused=True)
        del margins
        dt = check_bm.net.dtype
        with PeakMemory() as check_peak, torch.no_grad():
            p.margins(lo.detach().to(dt), hi.detach().to(dt), p.spec.to(dt), bm=check_bm, alpha_steps=steps)
        peaks.append((grad_peak.peak, check_peak.peak))
    per = max(max(two - one for two, one in zip(*peaks)), 1)
    return MemoryEstimate(fixed=max(max(peaks[1]) - per, 0), per_sample=per * copies(cfg))


def copies(cfg: CertifyConfig) -> int:
    """How many boxes per sample one bound call of a batch may hold: the final polish scales
    every candidate shape at once (the last iterate, alpha-crown's CROWN shape, the best)."""
    if not cfg.polish:
        return 1
    return 1 + bool(cfg.iterations) + (cfg.method == "alpha-crown" and bool(cfg.crown_start))


def affordable_batch(
    bm: BoundedModel, check_bm: BoundedModel, x: Tensor, cfg: CertifyConfig, batch_size: int
) -> int:
    """``batch_size``, or the largest batch whose bounds fit in ``FREE_SHARE`` of the free memory
    of ``x``'s device when the batches of ``x`` would not (a warning says so);
    :class:`DoesNotFit` when not even one sample's measurement fits."""
    device = x.device
    budget = FREE_SHARE * free_memory(device)
    largest = min(batch_size, len(x))
    quick = getattr(bm.net, "tape_bytes_per_sample", None)
    if quick is not None and largest * quick() <= budget:
        return batch_size
    try:
        est = measure_memory(bm, check_bm, x, cfg)
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        raise DoesNotFit(
            f"one sample's bounds do not fit in the free memory ({free_memory(device) / 2**30:.1f} GiB); "
            "use a machine with more memory or a smaller model"
        ) from None
    fits = max(1, int((budget / OVERHEAD - est.fixed) // est.per_sample))
    if fits >= largest:
        return batch_size
    if fits < batch_size:
        warnings.warn(
            f"batch_size {batch_size} would need ~{est.batch_bytes(batch_size) / 2**30:.1f} GiB for the "
            f"bounds; using {fits} (free memory {free_memory(device) / 2**30:.1f} GiB; the same boxes up "
            "to float rounding)",
            stacklevel=3,
        )
    return fits


__all__ = ["FREE_SHARE", "OVERHEAD", "DoesNotFit", "MemoryEstimate", "affordable_batch", "measure_memory"]
