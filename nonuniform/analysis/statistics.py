"""Feature robustness ranking and the geometric similarity of certified boxes.

A feature's robustness in one box is its log half-width. Boxes of different samples differ in
overall size, so scores are per-sample standardised log half-widths (z-scores over the free
features) before they are aggregated: a sample with a larger box does not dominate. Rankings go
from least to most robust. Shapes: per-sample matrices are ``(samples, free features)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..certify.result import CertifiedBoxes


def log_radii(boxes: CertifiedBoxes) -> tuple[np.ndarray, np.ndarray]:
    """Log half-widths of the certified samples over the free features, and their labels
    (predicted classes): ``(n, f)`` and ``(n,)``."""
    cert = boxes.certified
    r = boxes.radii[cert].reshape(int(cert.sum()), -1)[:, boxes.free.reshape(-1)]
    return np.log(np.maximum(r, 1e-12)), boxes.preds[cert]


def standardise(scores: np.ndarray) -> np.ndarray:
    """Per-row z-scores; a constant row becomes zeros."""
    mu = scores.mean(1, keepdims=True)
    sd = scores.std(1, keepdims=True)
    return (scores - mu) / np.where(sd > 0, sd, 1.0)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Feature indices from least to most robust (stable for ties)."""
    return np.argsort(scores, kind="stable")


@dataclass
class FeatureRobustness:
    mean: np.ndarray  # (f,) mean standardised score over samples
    median: np.ndarray  # (f,)
    per_class_mean: dict[int, np.ndarray]
    order: np.ndarray  # (f,) least robust first, by mean
    standard_error: np.ndarray  # (f,) bootstrap standard error of the mean score
    rank_stability: float  # mean Spearman correlation of bootstrap rankings with ``order``
    n_samples: int


def feature_robustness(boxes: CertifiedBoxes, n_boot: int = 200, seed: int = 0) -> FeatureRobustness:
    raw, labels = log_radii(boxes)
    if len(raw) < 2:
        raise ValueError("feature robustness needs at least two certified boxes")
    z = standardise(raw)
    mean = z.mean(0)
    rng = np.random.default_rng(seed)
    boot = np.stack([z[rng.integers(0, len(z), len(z))].mean(0) for _ in range(n_boot)])
    rhos = [stats.spearmanr(b, mean).statistic for b in boot]
    return FeatureRobustness(
        mean=mean,
        median=np.median(z, 0),
        per_class_mean={int(c): z[labels == c].mean(0) for c in np.unique(labels)},
        order=ranking(mean),
        standard_error=boot.std(0),
        rank_stability=float(np.nanmean(rhos)),
        n_samples=len(z),
    )


def cosine_similarity(a: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``a``: ``(n, n)``."""
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    unit = a / np.where(norm > 0, norm, 1.0)
    return unit @ unit.T


def class_similarity(sim: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean similarity of pairs of distinct samples within a class and between classes."""
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    within = sim[same & off]
    between = sim[~same]
    return (
        float(within.mean()) if within.size else float("nan"),
        float(between.mean()) if between.size else float("nan"),
    )


def split_half_correlation(scores: np.ndarray, n_splits: int = 20, seed: int = 0) -> tuple[float, float]:
    """Mean Spearman and Kendall correlation between the mean feature scores of random disjoint
    halves of the samples: how data-agnostic the ranking is (1 = identical rankings)."""
    if len(scores) < 2:
        raise ValueError("split-half correlation needs at least two samples")
    rng = np.random.default_rng(seed)
    sp, kd = [], []
    for _ in range(n_splits):
        perm = rng.permutation(len(scores))
        a, b = scores[perm[: len(perm) // 2]].mean(0), scores[perm[len(perm) // 2 :]].mean(0)
        if np.ptp(a) == 0 and np.ptp(b) == 0:  # constant pattern on both halves: identical
            sp.append(1.0)
            kd.append(1.0)
            continue
        sp.append(stats.spearmanr(a, b).statistic)
        kd.append(stats.kendalltau(a, b).statistic)
    return float(np.nanmean(sp)), float(np.nanmean(kd))


@dataclass
class SimilarityReport:
    cosine_radii_within: float
    cosine_radii_between: float
    cosine_logradii_within: float
    cosine_logradii_between: float
    split_half_spearman: float
    split_half_kendall: float


def similarity_report(boxes: CertifiedBoxes, seed: int = 0) -> SimilarityReport:
    raw, labels = log_radii(boxes)
    w_r, b_r = class_similarity(cosine_similarity(np.exp(raw)), labels)
    w_l, b_l = class_similarity(cosine_similarity(standardise(raw)), labels)
    sp, kd = split_half_correlation(standardise(raw), seed=seed)
    return SimilarityReport(w_r, b_r, w_l, b_l, sp, kd)
