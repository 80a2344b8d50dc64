"""Bounds, boxes and the CLI's output are what they were before the sub-package layout.

``tests/golden/runs.py`` defines the runs and records them (commit 22a2ea2, the flat layout);
here they are recomputed through the public API and compared: arrays to 1e-6 relative, JSON
key by key (keys added since are allowed, every recorded one must hold the same value).
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
            assert_contains(json.loads(str(old[key])), json.loads(str(now[key])))
        else:
            np.testing.assert_allclose(now[key], old[key], rtol=1e-6, atol=1e-9, err_msg=key)
