"""Hand-computable cases for ranking and similarity metrics."""

from __future__ import annotations

import numpy as np

from nonuniform.analysis.statistics import (
    class_similarity,
    cosine_similarity,
    feature_robustness,
    similarity_report,
    split_half_correlation,
)
from nonuniform.certify.boxes import CertifiedBoxes


def _boxes(radii: np.ndarray, preds: np.ndarray) -> CertifiedBoxes:
    n = len(radii)
    x = np.full_like(radii, 0.5)
    z = np.zeros(n)
    return CertifiedBoxes(
        inputs=x,
        lower=x - radii,
        upper=x + radii,
        labels=preds,
        preds=preds,
        certified=np.ones(n, bool),
        log_volume=z,
        uniform_radius=z,
        uniform_log_volume=z,
        apothem=z,
        margin=z,
        used_uniform=np.zeros(n, bool),
        iterations=z.astype(int),
        seconds=z,
        indices=np.arange(n),
        free=np.ones(radii.shape[1:], bool),
    )


def test_identical_boxes_have_similarity_one():
    r = np.tile(np.array([[0.1, 0.2, 0.05, 0.3]]), (4, 1))
    sim = cosine_similarity(r)
    np.testing.assert_allclose(sim, 1.0)
    rep = similarity_report(_boxes(r, np.array([0, 0, 1, 1])))
    assert abs(rep.cosine_radii_within - 1) < 1e-12 and abs(rep.cosine_radii_between - 1) < 1e-12


def test_permuted_features_rank_as_permuted():
    rng = np.random.default_rng(0)
    base = np.array([0.01, 0.3, 0.02, 0.2, 0.1, 0.05])
    radii = base * np.exp(rng.normal(0, 0.05, (30, 6)))  # noisy copies of one pattern
    scale = np.exp(rng.normal(0, 1.0, (30, 1)))  # samples with very different overall size
    fr = feature_robustness(_boxes(radii * scale, np.zeros(30, int)))
    assert fr.order.tolist() == np.argsort(base).tolist() == [0, 2, 5, 4, 3, 1]
    perm = np.array([3, 0, 5, 1, 4, 2])
    fr_p = feature_robustness(_boxes((radii * scale)[:, perm], np.zeros(30, int)))
    assert fr_p.order.tolist() == np.argsort(base[perm]).tolist()
    assert fr.rank_stability > 0.95 and (fr.standard_error < 0.2).all()


def test_split_half_of_constant_pattern_is_one():
    pattern = np.array([0.0, 1.0, 2.0, 5.0, 3.0])
    sp, kd = split_half_correlation(np.tile(pattern, (10, 1)))
    assert abs(sp - 1) < 1e-12 and abs(kd - 1) < 1e-12
    rng = np.random.default_rng(1)
    sp, kd = split_half_correlation(rng.normal(size=(200, 50)))  # pure noise: no agreement
    assert abs(sp) < 0.15 and abs(kd) < 0.15


def test_within_between_class():
    sim = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    w, b = class_similarity(sim, np.array([0, 0, 1]))
    assert w == 0.9 and abs(b - 0.15) < 1e-12
