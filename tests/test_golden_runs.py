"""Bounds, boxes and the CLI's output are what they were before the sub-package layout.

``tests/golden/runs.py`` defines the runs and records them (commit 22a2ea2, the flat layout);
here they are recomputed through the public API and compared: arrays to 1e-5 relative + 1e-4
absolute, JSON numbers to 1e-4 relative (float32 results differ by ~2e-5 between CPUs), JSON key
by key (keys added since are allowed, every recorded one must hold the same value).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.golden.runs import GOLDEN, compute
from tests.test_golden import assert_contains


@pytest.fixture(scope="module")
def now() -> dict[str, np.ndarray]:
    return compute()


def test_same_outputs_as_recorded(now):
    old = np.load(GOLDEN)
    assert sorted(old.files) == sorted(now), "the set of recorded runs changed"
    for key in old.files:
        if key == "cli.certify":
            assert_contains(json.loads(str(old[key])), json.loads(str(now[key])), rel=1e-4, abs_=1e-5)
        else:
            # float32 sums differ by ~2e-5 between CPUs (kernels, SIMD width); a change to a bound or a
            # box moves it by orders of magnitude more
            np.testing.assert_allclose(now[key], old[key], rtol=1e-5, atol=1e-4, err_msg=key)
