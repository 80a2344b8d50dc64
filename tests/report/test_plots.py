"""Figures for every input layout: channels-first and channels-last images, normalised inputs
(not clipped to grey), flat vectors (bar charts), without matplotlib's clipping warnings."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from nonuniform.certify.result import CertifiedBoxes
from nonuniform.report.plots import _chw, _image, overview_figure, sample_figure


def boxes_for(shape: tuple[int, ...], lo: float = 0.0, hi: float = 1.0) -> CertifiedBoxes:
    rng = np.random.default_rng(0)
    x = (lo + (hi - lo) * rng.random((2, *shape))).astype(np.float32)
    r = np.full_like(x, 0.01 * (hi - lo))
    n = 2
    return CertifiedBoxes(
        inputs=x, lower=x - r, upper=x + r, labels=np.zeros(n, np.int64), preds=np.zeros(n, np.int64),
        certified=np.ones(n, bool), log_volume=np.full(n, -100.0), uniform_radius=np.full(n, 0.005),
        uniform_log_volume=np.full(n, -120.0), apothem=np.full(n, 0.01), margin=np.full(n, 0.1),
        used_uniform=np.zeros(n, bool), iterations=np.zeros(n, np.int64), seconds=np.zeros(n),
        indices=np.arange(n), free=np.ones(shape, bool),
    )  # fmt: skip


def test_layouts_are_read_as_images_or_flat():
    assert _chw(np.zeros((3, 32, 32))).shape == (3, 32, 32)
    assert _chw(np.zeros((32, 32, 3))).shape == (3, 32, 32)  # channels-last
    assert _chw(np.zeros(784)).shape == (1, 28, 28)
    assert _chw(np.zeros(5)) is None  # ACAS Xu's five inputs: a bar chart
    assert _chw(np.zeros((1, 1, 5))) is None  # ... also as the (1, 1, 5) the ONNX files take
    rgb = _image(np.random.default_rng(0).normal(size=(32, 32, 3)), colour=True)
    assert rgb.shape == (32, 32, 3) and rgb.min() >= 0 and rgb.max() <= 1  # normalised, not clipped


@pytest.mark.parametrize(
    "shape,lo,hi", [((3, 8, 8), 0.0, 1.0), ((8, 8, 3), 0.0, 1.0), ((3, 8, 8), -2.0, 2.5), ((5,), -1.0, 1.0)]
)
def test_figures_draw_every_layout_without_clipping(shape, lo, hi, tmp_path, caplog):
    res = boxes_for(shape, lo, hi)
    with caplog.at_level(logging.WARNING):
        sample_figure(res, 0, tmp_path / "s.png")
        overview_figure(res, tmp_path / "o.png")
    assert (tmp_path / "s.png").stat().st_size > 1000 and (tmp_path / "o.png").stat().st_size > 1000
    assert not [r for r in caplog.records if "Clipping" in r.getMessage()]


def test_group_outlines_follow_the_run_groups():
    """Patch groups are outlined on the radius panels (one line per patch border); channel groups,
    which do not vary across the picture, are not."""
    from nonuniform.report.plots import _group_image

    res = boxes_for((1, 8, 8))
    res.settings = {"groups": "patch:4x4"}
    ids = _group_image(res)
    assert ids.shape == (8, 8) and len(np.unique(ids)) == 4
    res.settings = {"groups": "channel"}
    assert _group_image(res) is None
    res.settings = {"groups": [[[0] * 4 + [1] * 4] * 8]}  # a given map: left and right halves
    assert len(np.unique(_group_image(res))) == 2
    from matplotlib.figure import Figure

    from nonuniform.report.plots import _outline_groups

    ax = Figure().subplots()
    _outline_groups(ax, _group_image(res))
    (lines,) = ax.collections
    assert len(lines.get_segments()) == 8  # the border between the halves, one segment per row
