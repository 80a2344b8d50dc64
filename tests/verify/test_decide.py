"""The complete verifier's scheduler: answers agree with MILP, counterexamples hold, disjunctions
of input boxes, time-outs kept, and 'unknown' says why."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nonuniform.proof.milp import verify_box_milp
from nonuniform.verify.decide import VerifierConfig, _attack_share, decide
from nonuniform.verify.vnnlib import parse_vnnlib
from tests.nets import mlp


def write_property(path: Path, boxes: list[tuple[np.ndarray, np.ndarray]], outputs: int, region: str) -> Path:
    """A VNN-LIB file: the union of ``boxes`` (one assert with an OR when several), ``region`` as is."""
    n = len(boxes[0][0])
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(n))
    text += "".join(f"(declare-const Y_{j} Real)\n" for j in range(outputs))

    def conj(lo, hi):
        return " ".join(f"(<= X_{i} {float(hi[i])!r}) (>= X_{i} {float(lo[i])!r})" for i in range(n))

    if len(boxes) == 1:
        text += "".join(f"(assert {a})\n" for a in conj(*boxes[0]).replace(") (", ")\n(").splitlines())
    else:
        text += "(assert (or " + " ".join(f"(and {conj(lo, hi)})" for lo, hi in boxes) + "))\n"
    path.write_text(text + f"(assert {region})\n")
    return path


def not_label(label: int, classes: int) -> str:
    return "(or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label) + ")"


@pytest.mark.parametrize("seed", [0, 1])
def test_answers_agree_with_milp_and_counterexamples_hold(tmp_path, seed):
    model = mlp(nn.ReLU(), sizes=(5, 12, 12, 3), seed=seed).eval()
    x = torch.rand(5, generator=torch.Generator().manual_seed(seed))
    label = int(model(x[None]).argmax())
    lo_r, hi_r = 1e-3, 3.0
    for _ in range(8):  # MILP's robust / refuted radii
        mid = math.sqrt(lo_r * hi_r)
        robust = verify_box_milp(model, x - mid, x + mid, label, time_limit=30).status == "robust"
        lo_r, hi_r = (mid, hi_r) if robust else (lo_r, mid)
    for r, expect in ((lo_r * 0.9, "unsat"), (hi_r * 1.1, "sat")):
        lo, hi = (x - r).double().numpy(), (x + r).double().numpy()
        prop = parse_vnnlib(write_property(tmp_path / "p.vnnlib", [(lo, hi)], 3, not_label(label, 3)))
        res = decide(model, prop, (5,), timeout=20)
        assert res.status == expect, (r, res)
        if expect == "sat":
            cex = res.counterexample
            assert (cex >= lo).all() and (cex <= hi).all()
            y = model(torch.tensor(cex, dtype=torch.float32)[None])[0]
            assert int(y.argmax()) != label or y.max() == y[[j for j in range(3) if j != label]].max()
            assert res.vnncomp_text().startswith("sat\n((X_0 ")


def test_a_disjunction_of_input_boxes_is_sat_only_through_its_unsafe_box(tmp_path):
    model = mlp(nn.ReLU(), sizes=(5, 12, 3), seed=3).eval()
    x = torch.rand(5, generator=torch.Generator().manual_seed(3))
    label = int(model(x[None]).argmax())
    safe = ((x - 1e-3).double().numpy(), (x + 1e-3).double().numpy())
    huge = ((x - 50).double().numpy(), (x + 50).double().numpy())
    prop = parse_vnnlib(
        write_property(
            tmp_path / "p.vnnlib", [safe, (safe[0] + 5e-4, safe[1] + 5e-4)], 3, not_label(label, 3)
        )
    )
    assert len(prop.regions) == 2 and decide(model, prop, (5,), timeout=10).status == "unsat"
    prop = parse_vnnlib(write_property(tmp_path / "p.vnnlib", [safe, huge], 3, not_label(label, 3)))
    res = decide(model, prop, (5,), timeout=10)
    assert res.status == "sat"
    assert not ((res.counterexample >= safe[0]).all() and (res.counterexample <= safe[1]).all())


def test_a_conjunction_counterexample_satisfies_every_atom(tmp_path):
    """'Y_0 is the largest' on a box where it is somewhere: the point found makes it so."""
    model = mlp(nn.ReLU(), sizes=(5, 16, 16, 4), seed=4).eval()
    lo, hi = -np.ones(5) * 3, np.ones(5) * 3
    pts = torch.rand(20000, 5) * 6 - 3
    assert (model(pts).argmax(1) == 0).any()
    region = "(and " + " ".join(f"(<= Y_{j} Y_0)" for j in range(1, 4)) + ")"
    res = decide(model, parse_vnnlib(write_property(tmp_path / "p.vnnlib", [(lo, hi)], 4, region)), (5,), 10)
    assert res.status == "sat"
    y = model(torch.tensor(res.counterexample, dtype=torch.float32)[None])[0]
    assert (y[0] >= y[1:]).all()


def test_time_out_is_kept_and_unknown_says_why(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
    lo, hi = -np.ones(40), np.ones(40)
    x = torch.rand(4096, 40) * 2 - 1
    with torch.no_grad():
        top = float((model(x)[:, 0] - model(x)[:, 1]).max())
    # y0 - y1 >= top + 1: beyond what 4096 samples reach, too tight for bounds on a 40-input box
    path = write_property(tmp_path / "p.vnnlib", [(lo, hi)], 2, f"(>= (- Y_0 Y_1) {top + 1.0!r})")
    res = decide(model, parse_vnnlib(path), (40,), timeout=4.0)
    assert res.status in ("timeout", "sat") and res.seconds <= 4.0 + 3.0, res
    res = decide(model, parse_vnnlib(path), (40,), 4.0, VerifierConfig(bab=False))
    assert res.status in ("unknown", "sat")
    if res.status == "unknown":
        assert res.details["reason"] == "branch-and-bound is off" and res.seconds < 4.0 + 3.0


def test_acas_xu_property_6_two_input_boxes(vnncomp_dir):
    """ACAS Xu prop 6 (an OR of two input boxes, refused before) is proved, as every published
    tool that decided it says."""
    from nonuniform import load_model

    folder = vnncomp_dir / "acasxu"
    model, card = load_model(str(folder / "ACASXU_run2a_1_1_batch_2000.onnx"))
    prop = parse_vnnlib(folder / "prop_6.vnnlib")
    assert len(prop.regions) == 2
    assert decide(model, prop, card.input_shape, timeout=100).status == "unsat"


def test_acas_xu_counterexample_far_from_the_centre(vnncomp_dir):
    """ACASXU 2_1 prop 2: the falsifier's PGD used to stay at the centre; now sat, checked."""
    from nonuniform import load_model

    folder = vnncomp_dir / "acasxu"
    model, card = load_model(str(folder / "ACASXU_run2a_2_1_batch_2000.onnx"))
    prop = parse_vnnlib(folder / "prop_2.vnnlib")
    res = decide(model, prop, card.input_shape, timeout=30)
    assert res.status == "sat"
    y = model(torch.tensor(res.counterexample, dtype=torch.float32).reshape(1, *card.input_shape))[0]
    assert (y[0] >= y[1:]).all()


def test_acas_xu_sliver_found_by_spending_the_sampling_share(vnncomp_dir):
    """ACASXU 1_9 prop 7: ~1 in 5 million uniform points is unsafe, PGD from the centre and the
    leaves' hints missed it for 116 s; half of every attack slice on random points (and PGD from
    the best of them) finds it within a few rounds. The point is checked here again."""
    from nonuniform import load_model

    folder = vnncomp_dir / "acasxu"
    model, card = load_model(str(folder / "ACASXU_run2a_1_9_batch_2000.onnx"))
    prop = parse_vnnlib(folder / "prop_7.vnnlib")
    res = decide(model, prop, card.input_shape, timeout=60)
    assert res.status == "sat", res
    x = torch.tensor(res.counterexample, dtype=torch.float32).reshape(1, *card.input_shape)
    lo, hi = (torch.tensor(b, dtype=torch.float32) for b in (prop.regions[0].lower, prop.regions[0].upper))
    assert ((x.flatten() >= lo) & (x.flatten() <= hi)).all()
    y = model(x)[0]
    assert y[3] <= y[:3].min() or y[4] <= y[:3].min()  # strong left or strong right is the minimum


def test_the_attacks_share_of_a_round_decays_after_the_first_rounds():
    cfg = VerifierConfig()
    shares = [_attack_share(cfg, r) for r in range(1, 9)]
    assert shares[: cfg.attack_rounds] == [cfg.attack_share] * cfg.attack_rounds
    assert shares[cfg.attack_rounds :] == [0.125, 0.0625, 0.05, 0.05]
