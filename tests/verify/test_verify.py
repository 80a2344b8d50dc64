"""verify_boxes: well-formedness, a fresh bound and attacks, as a library call."""

from __future__ import annotations

import numpy as np

from nonuniform import certify_boxes, load_model
from nonuniform.verify.boxes import verify_boxes
from nonuniform.zoo.samples import load_samples


def test_verify_passes_real_boxes_and_catches_swapped_and_escaping_ones():
    model, _ = load_model("mnist-mlp")
    x, y = load_samples("mnist")
    boxes = certify_boxes(model, x[:4], y[:4], iterations=10)
    assert boxes.certified.all()
    report = verify_boxes(model, boxes, attack_restarts=1, attack_steps=10, corners=16)
    assert report.ok and report.certified == 4 and report.to_dict()["ok"] is True
    swapped = boxes.subset(np.ones(4, dtype=bool))
    swapped.lower[3], swapped.upper[3] = boxes.lower[1].copy(), boxes.upper[1].copy()  # sample 3, box of 1
    report = verify_boxes(model, swapped, attack_restarts=1, attack_steps=10, corners=16)
    assert 3 in report.malformed and not report.ok
    escaping = boxes.subset(np.ones(4, dtype=bool))
    escaping.upper[0] = escaping.upper[0] + 0.5  # leaves the [0, 1] domain
    report = verify_boxes(model, escaping, attack_restarts=1, attack_steps=10, corners=16)
    assert report.malformed == [0]
