"""Robustness-based explanations and their evaluation (Hsieh et al., ICLR 2021 protocol).

An explanation ranks features by importance. Ours: features with the smallest certified half-width
are the ones the prediction is fragile in, so importance = -log half-width. Baselines follow
Captum's ``Method(model).attribute(inputs, target=...)`` shape and come from Captum: gradient
magnitude (saliency), |gradient x input|, |integrated gradients|, |DeepLIFT|, occlusion; plus
random and the uniform box (all features equal: a control). Evaluation for the top-k set S of each ranking:

* Robustness-S_r: smallest L-inf budget with which PGD moving only S changes the prediction
  (bisection over the budget) - lower is better: S holds what the prediction depends on;
* Robustness-S_r-complement: the same moving only the complement - higher is better;
* certified complement radius: the largest uniform radius on the complement (S fixed) that the
  bound engine proves - a provable lower bound of the complement criterion.

Shapes: inputs ``(n, *input_shape)``; attributions and masks the same; scores ``(n,)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks.pgd import margin_objective
from ..certify.result import CertifiedBoxes
from ..engine.bounds import BoundedModel, margin_spec

K_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 10))  # 5%, 10%, ..., 45%


# -- rankings -------------------------------------------------------------------------------------


class CaptumRanking:
    """|attribution| of a Captum method for the target logit: the saliency-type baselines.

    Captum (``captum.attr``) computes the attributions; this class only fixes the call shape and
    takes magnitudes (a ranking cares how much a feature matters, not its sign).
    """

    method: str = ""
    options: dict = {}

    def __init__(self, model: nn.Module, **options) -> None:
        import captum.attr

        self.model = model
        self.explainer = getattr(captum.attr, self.method)(model)
        self.options = {**type(self).options, **options}

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        with torch.enable_grad(), warnings.catch_warnings():
            # DeepLift announces its (temporary) hooks on every call
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            x = inputs.detach().clone().requires_grad_(True)
            a = self.explainer.attribute(x, target=target, **self.options)
        return a.detach().abs()


class Saliency(CaptumRanking):
    """|d f_target / d x| (captum.attr.Saliency)."""

    method = "Saliency"
    options = {"abs": True}


class InputXGradient(CaptumRanking):
    """|x * d f_target / d x| (captum.attr.InputXGradient)."""

    method = "InputXGradient"


class IntegratedGradients(CaptumRanking):
    """|integrated gradients| from a zero baseline (captum.attr.IntegratedGradients, Riemann
    middle rule, 32 steps)."""

    method = "IntegratedGradients"
    options = {"n_steps": 32, "method": "riemann_middle"}


class DeepLift(CaptumRanking):
    """|DeepLIFT| from a zero baseline (captum.attr.DeepLift; rescale rule)."""

    method = "DeepLift"


class Occlusion(CaptumRanking):
    """|output change when a 4x4 patch (per channel) is set to 0| (captum.attr.Occlusion)."""

    method = "Occlusion"

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        window = tuple(min(4, d) if i else 1 for i, d in enumerate(inputs.shape[1:]))
        strides = tuple(max(1, w // 2) for w in window)
        with torch.no_grad():
            a = self.explainer.attribute(
                inputs.clone(), target=target, sliding_window_shapes=window, strides=strides
            )
        return a.detach().abs()


class RandomRanking:
    def __init__(self, model: nn.Module | None = None, seed: int = 0) -> None:
        self.seed = seed

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(inputs.shape, generator=g).to(inputs)  # CPU draws: device-independent


def robustness_attribution(boxes: CertifiedBoxes) -> Tensor:
    """Importance from certified boxes: -log half-width (fixed features: -inf, never chosen)."""
    r = torch.as_tensor(boxes.radii)
    imp = -torch.log(r.clamp(min=1e-12))
    return torch.where(torch.as_tensor(boxes.free).expand_as(r), imp, torch.tensor(-np.inf))


def uniform_attribution(boxes: CertifiedBoxes) -> Tensor:
    """The uniform box ranks every free feature equally: a control (ties broken at random)."""
    return torch.where(torch.as_tensor(boxes.free), 0.0, -np.inf).expand(boxes.radii.shape).clone()


def top_k_mask(importance: Tensor, k: int | float, free: Tensor | None = None, seed: int = 0) -> Tensor:
    """Boolean mask of the k most important features per sample (k: count or fraction of the free
    features). Ties are broken by a seeded random permutation, not by feature order."""
    n = importance.shape[0]
    flat = importance.reshape(n, -1).double()
    n_free = int(free.sum()) if free is not None else flat.shape[1]
    kk = int(round(k * n_free)) if isinstance(k, float) else int(k)
    kk = max(0, min(kk, n_free))
    g = torch.Generator().manual_seed(seed)
    jitter = torch.rand(flat.shape, generator=g, dtype=torch.float64).to(flat.device)
    finite = flat[torch.isfinite(flat)]
    jitter = jitter * 1e-9 * ((finite.abs().max() if finite.numel() else 0.0) + 1)
    idx = torch.topk(flat + jitter, kk, dim=1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask.reshape(importance.shape)


def explanation_set(boxes: CertifiedBoxes, k: int | float) -> np.ndarray:
    """The k least-robust free features of each sample: boolean mask shaped like the inputs."""
    return top_k_mask(robustness_attribution(boxes), k, torch.as_tensor(boxes.free)).numpy()


# -- evaluation -----------------------------------------------------------------------------------


def masked_pgd(
    model: nn.Module,
    x0: Tensor,
    labels: Tensor,
    mask: Tensor,
    eps: Tensor,
    domain=(0.0, 1.0),
    steps: int = 20,
    restarts: int = 2,
    seed: int = 0,
) -> Tensor:
    """PGD in the L-inf ball of radius ``eps`` (per sample) moving only features where ``mask``;
    returns a bool per sample: the prediction changed. Features outside the mask never move."""
    obj = margin_objective(model, labels)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    e = eps.reshape(shape) * mask
    lo, hi = (x0 - e).clamp(*domain), (x0 + e).clamp(*domain)
    g = torch.Generator().manual_seed(seed)
    broken = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    for r in range(restarts):
        noise = torch.rand(x0.shape, generator=g).to(x0)  # CPU generator: same draws on any device
        x = x0.clone() if r == 0 else lo + noise * (hi - lo)
        for _ in range(steps):
            x.requires_grad_(True)
            with torch.enable_grad():
                v = obj(x)
                (grad,) = torch.autograd.grad(v.sum(), x)
            with torch.no_grad():
                broken |= v < 0
                step = (2.5 / steps) * (hi - lo) / 2 + 1e-12
                x = torch.min(torch.max(x - step * grad.sign(), lo), hi)
        with torch.no_grad():
            broken |= obj(x) < 0
    return broken


def min_attack_budget(
    model: nn.Module,
    x0: Tensor,
    labels: Tensor,
    mask: Tensor,
    domain=(0.0, 1.0),
    bisection: int = 10,
    **pgd,
) -> Tensor:
    """Smallest budget (to 2^-bisection of the domain span) with which masked PGD succeeds;
    the span itself where it never does (a censored value)."""
    span = float(torch.as_tensor(domain[1] - domain[0]).max())
    lo = torch.zeros(len(x0), device=x0.device)
    hi = torch.full((len(x0),), span, device=x0.device)
    ok_hi = masked_pgd(model, x0, labels, mask, hi, domain, **pgd)
    for _ in range(bisection):
        mid = (lo + hi) / 2
        ok = masked_pgd(model, x0, labels, mask, mid, domain, **pgd)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return torch.where(ok_hi, hi, torch.full_like(hi, span))


def certified_complement_radius(
    model: nn.Module,
    x0: Tensor,
    labels: Tensor,
    mask: Tensor,
    method: str = "crown",
    domain=(0.0, 1.0),
    bisection: int = 12,
) -> Tensor:
    """Largest uniform radius, on the features outside ``mask`` only, certified by the bound
    engine (bisection; 0 where even a tiny radius fails). A provable lower bound of the
    complement attack budget."""
    bm = BoundedModel(model, tuple(x0.shape[1:]), x0.dtype, x0.device)
    spec = margin_spec(labels, bm.num_classes).to(x0.dtype)
    free = (~mask).to(x0.dtype)
    shape = (-1,) + (1,) * (x0.dim() - 1)

    def ok(r: Tensor) -> Tensor:
        e = r.reshape(shape) * free
        with torch.no_grad():
            lb, _ = bm.bounds(
                (x0 - e).clamp(*domain), (x0 + e).clamp(*domain), spec, method, bound_upper=False
            )
        return (lb > 0).all(1)

    span = float(torch.as_tensor(domain[1] - domain[0]).max())
    lo = torch.zeros(len(x0), device=x0.device, dtype=x0.dtype)
    hi = torch.full((len(x0),), span, device=x0.device, dtype=x0.dtype)
    top = ok(hi)
    for _ in range(bisection):
        mid = (lo + hi) / 2
        good = ok(mid)
        lo = torch.where(good, mid, lo)
        hi = torch.where(good, hi, mid)
    return torch.where(top, hi, lo)


@dataclass
class ExplanationScores:
    method: str
    k_fractions: tuple[float, ...]
    s_r: np.ndarray  # (len(k), n) attack budget moving only the set (lower is better)
    s_r_complement: np.ndarray  # (len(k), n) moving only the complement (higher is better)
    certified_complement: np.ndarray | None = None  # (len(k), n)
    extra: dict = field(default_factory=dict)

    @staticmethod
    def _auc(curve: np.ndarray, ks) -> float:
        y = curve.mean(1)
        return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(ks)))

    @property
    def auc_s_r(self) -> float:
        return self._auc(self.s_r, self.k_fractions)

    @property
    def auc_s_r_complement(self) -> float:
        return self._auc(self.s_r_complement, self.k_fractions)


def evaluate_ranking(
    model: nn.Module,
    x0: Tensor,
    labels: Tensor,
    importance: Tensor,
    free: Tensor,
    name: str,
    k_fractions=K_FRACTIONS,
    domain=(0.0, 1.0),
    certified: bool = False,
    seed: int = 0,
    bisection: int = 10,
    **pgd,
) -> ExplanationScores:
    """Both criteria (and optionally the certified complement radius) at every k."""
    s_r, s_c, cert = [], [], []
    for k in k_fractions:
        mask = top_k_mask(importance, float(k), free, seed=seed) & free
        s_r.append(min_attack_budget(model, x0, labels, mask, domain, bisection, seed=seed, **pgd).numpy())
        comp = (~mask) & free
        s_c.append(min_attack_budget(model, x0, labels, comp, domain, bisection, seed=seed, **pgd).numpy())
        if certified:
            cert.append(certified_complement_radius(model, x0, labels, mask | ~free, domain=domain).numpy())
    return ExplanationScores(
        name, tuple(k_fractions), np.stack(s_r), np.stack(s_c), np.stack(cert) if certified else None
    )
