"""Box shapes (issue 34): groups share a radius, frozen features stay put, whole-domain features
range over their domain, floors hold, and every such box survives attacks and a fresh proof."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nonuniform import certify_boxes, verify_boxes
from nonuniform.certify.shapes import floor_fraction, group_map
from tests.nets import cnn, mlp

WIDE = (-10.0, 10.0)  # no clipping: radii can be read off the boxes


def _inputs(shape, n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_group_maps():
    assert group_map("channel", (3, 2, 2))[:, 0, 0].tolist() == [0, 1, 2]
    g = group_map("patch:2x2", (2, 4, 4))
    assert len(np.unique(g)) == 4 and (g[0] == g[1]).all() and g[0, 0, 0] == g[0, 1, 1] != g[0, 0, 2]
    assert len(np.unique(group_map("patch:3x3", (1, 4, 4)))) == 4  # ragged edge patches
    assert group_map("time", (5, 3))[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert group_map(np.array([[7, 7], [3, 9]]), (2, 2)).tolist() == [[1, 1], [0, 2]]
    for bad, shape in (("channel", (6,)), ("patch:0x2", (1, 4, 4)), ("rows", (1, 4, 4))):
        with pytest.raises(ValueError):
            group_map(bad, shape)
    with pytest.raises(ValueError, match="one input"):
        group_map(np.zeros(5, dtype=int), (2, 2))
    assert floor_fraction("apothem") == 1.0 and floor_fraction("blend:0.25") == 0.25
    for bad in ("blend:0", "blend:2", "max", "blend:x"):
        with pytest.raises(ValueError):
            floor_fraction(bad)


def _attack_ok(model, res) -> None:
    """A fresh float64 proof, PGD with restarts and corners find nothing in any certified box."""
    rep = verify_boxes(model, res, attack_restarts=5, attack_steps=40, corners=256)
    assert rep.ok, rep.to_dict()


@pytest.mark.parametrize("spec", ["patch:2x2", "channel"])
def test_groups_share_one_radius_and_are_sound(spec):
    model = cnn(nn.ReLU(), seed=3, pool=False, bn=False)
    x = _inputs((1, 8, 8)) if spec != "channel" else _inputs((1, 8, 8))
    res = certify_boxes(model, x, domain=WIDE, groups=spec)
    assert res.certified.all()
    ids = group_map(spec, (1, 8, 8))
    for i in range(len(x)):
        r = res.upper[i] - res.inputs[i]
        for g in np.unique(ids):
            vals = r[ids == g]
            assert np.allclose(vals, vals[0], rtol=1e-5), (spec, g)
        assert np.allclose(res.inputs[i] - res.lower[i], r, rtol=1e-5)
    _attack_ok(model, res)


def test_time_groups_on_a_sequence_model():
    from nonuniform import SequenceClassifier

    torch.manual_seed(0)
    model = SequenceClassifier(nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 4)).eval()
    x = _inputs((5, 3), n=2)
    res = certify_boxes(model, x, groups="time", domain=WIDE)
    assert res.certified.all()
    r = res.upper - res.inputs
    assert np.allclose(r, r[:, :, :1], rtol=1e-5)  # one radius per time step
    _attack_ok(model, res)


def test_frozen_and_whole_features():
    model = mlp(nn.ReLU(), sizes=(6, 16, 16, 4), seed=1)
    x = _inputs((6,), n=4, seed=1)
    frozen = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    whole = np.array([0, 0, 0, 0, 0, 1], dtype=bool)
    plain = certify_boxes(model, x)
    res = certify_boxes(model, x, frozen=frozen, whole=whole)
    assert res.certified.any()
    c = res.certified
    assert (res.lower[c][:, frozen] == res.inputs[c][:, frozen]).all()
    assert (res.upper[c][:, frozen] == res.inputs[c][:, frozen]).all()
    assert (res.lower[c][:, whole] == 0).all() and (res.upper[c][:, whole] == 1).all()
    assert res.free.tolist() == [False, False, True, True, True, False]
    _attack_ok(model, res)
    # Frozen features only: the rest get larger boxes than without the mask.
    only = certify_boxes(model, x, frozen=frozen)
    both = only.certified & plain.certified
    rest = ~frozen
    log_half = lambda r: np.log(np.maximum(r.upper - r.lower, 1e-30) / 2)[:, rest].mean(1)  # noqa: E731
    assert (log_half(only)[both] > log_half(plain)[both] + 1e-3).all()


def test_apothem_and_blend_floors():
    model = mlp(nn.ReLU(), sizes=(6, 16, 16, 4), seed=2)
    x = _inputs((6,), n=4, seed=2)
    vol = certify_boxes(model, x)
    apo = certify_boxes(model, x, objective="apothem")
    blend = certify_boxes(model, x, objective="blend:0.5")
    for res, frac in ((apo, 1.0), (blend, 0.5)):
        c = res.certified
        assert c.any()
        r = frac * res.uniform_radius[c][:, None] * (1 - 1e-6)
        # the box holds the uniform box of radius frac * r_u (clipped to the domain)
        assert (res.lower[c] <= np.maximum(res.inputs[c] - r, 0) + 1e-7).all()
        assert (res.upper[c] >= np.minimum(res.inputs[c] + r, 1) - 1e-7).all()
        assert (res.log_volume[c] >= res.uniform_log_volume[c] - 1e-6).all()
        _attack_ok(model, res)
    # The apothem objective's box holds the largest l-inf ball any certified box holds (the best
    # uniform radius): at least the volume box's, and its smallest half-width at least the
    # uniform box's.
    c = apo.certified & vol.certified
    assert (apo.linf_radius()[c] >= vol.linf_radius()[c] - 1e-6).all()
    assert np.allclose(apo.linf_radius()[c], apo.uniform_radius[c], rtol=1e-4)
    r_u = apo.uniform_radius[:, None]
    u_half = (np.minimum(apo.inputs + r_u, 1) - np.maximum(apo.inputs - r_u, 0)) / 2
    assert (apo.apothem[c] >= u_half.min(1)[c] - 1e-6).all()


def test_a_floor_above_the_uniform_radius_certifies_nothing_and_weights_work():
    model = mlp(nn.ReLU(), sizes=(6, 16, 16, 4), seed=2)
    x = _inputs((6,), n=2, seed=2)
    res = certify_boxes(model, x, floor=5.0)
    assert not res.certified.any() and (res.lower == res.inputs).all()
    w = np.array([4.0, 1, 1, 1, 1, 0])
    weighted = certify_boxes(model, x, weights=w)
    plain = certify_boxes(model, x)
    c = weighted.certified & plain.certified
    half = lambda r: np.log((r.upper - r.lower) / 2)  # noqa: E731
    assert (half(weighted)[c][:, 0] >= half(plain)[c][:, 0] - 1e-6).all()  # the heavy feature grows
    _attack_ok(model, weighted)


def test_shapes_are_batch_independent():
    model = mlp(nn.ReLU(), sizes=(6, 16, 16, 4), seed=4)
    x = _inputs((6,), n=4, seed=4)
    settings = dict(
        objective="blend:0.5", groups=np.array([0, 0, 1, 1, 2, 2]), frozen=np.eye(6, dtype=bool)[0]
    )
    together = certify_boxes(model, x, batch_size=4, **settings)
    alone = [certify_boxes(model, x[i : i + 1], batch_size=1, **settings) for i in range(4)]
    for i, a in enumerate(alone):
        assert np.allclose(together.lower[i], a.lower[0], atol=1e-5)
        assert np.allclose(together.upper[i], a.upper[0], atol=1e-5)


def test_bad_shapes_are_refused_before_any_work():
    model = mlp(nn.ReLU(), sizes=(6, 16, 16, 4), seed=1)
    x = _inputs((6,), n=1)
    with pytest.raises(ValueError, match="holds|hold 6"):
        certify_boxes(model, x, groups=np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="frozen mask has 3"):
        certify_boxes(model, x, frozen=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="both frozen and whole"):
        certify_boxes(model, x, frozen=np.ones(6, dtype=bool), whole=np.ones(6, dtype=bool))
    with pytest.raises(ValueError, match="no feature is left"):
        certify_boxes(model, x, frozen=np.ones(6, dtype=bool))
    with pytest.raises(ValueError, match="objective"):
        certify_boxes(model, x, objective="biggest")


def test_milp_finds_no_counterexample_in_shaped_boxes():
    """Complete check (MILP) of group, frozen and apothem boxes of a small ReLU net."""
    pytest.importorskip("scipy")
    model = mlp(nn.ReLU(), sizes=(6, 12, 12, 3), seed=5)
    x = _inputs((6,), n=2, seed=5)
    for settings in (
        dict(groups=np.array([0, 0, 0, 1, 1, 1])),
        dict(frozen=np.eye(6, dtype=bool)[2], objective="apothem"),
    ):
        res = certify_boxes(model, x, **settings)
        rep = verify_boxes(model, res, milp=True, milp_time_limit=30)
        assert rep.ok and all(s != "counterexample" for s in rep.milp.values()), rep.to_dict()
