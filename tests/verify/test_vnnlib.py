"""VNN-LIB parsing on its own: boxes, disjunctive normal form, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from nonuniform.verify.vnnlib import VnnlibError, parse_vnnlib

HEAD = """; a comment (ignored) with (parentheses)
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (<= X_0 1.0))
(assert (>= X_0 0.0))
(assert (<= X_1 2.0))
(assert (>= X_1 -2.0))
(assert (<= X_1 0.5)) ; a tighter second bound wins
"""


def parse(tmp_path, body: str):
    path = tmp_path / "p.vnnlib"
    path.write_text(HEAD + body)
    return parse_vnnlib(path)


def test_box_takes_the_tightest_bounds(tmp_path):
    prop = parse(tmp_path, "(assert (>= Y_0 Y_1))\n")
    assert prop.lower.tolist() == [0.0, -2.0] and prop.upper.tolist() == [1.0, 0.5]
    assert prop.n_outputs == 2


def test_atoms_are_c_dot_y_at_least_d(tmp_path):
    ((c, d),) = parse(tmp_path, "(assert (<= Y_0 3.5))\n").disjuncts[0]
    # Y_0 <= 3.5  <=>  -Y_0 >= -3.5
    assert c.tolist() == [-1.0, 0.0] and d == -3.5
    ((c, d),) = parse(tmp_path, "(assert (>= Y_1 Y_0))\n").disjuncts[0]
    assert c.tolist() == [-1.0, 1.0] and d == 0.0


def test_several_output_asserts_are_conjoined_and_multiplied_out(tmp_path):
    prop = parse(
        tmp_path,
        "(assert (or (>= Y_0 1.0) (>= Y_1 1.0)))\n(assert (or (<= Y_0 5.0) (<= Y_1 5.0)))\n",
    )
    assert len(prop.disjuncts) == 4 and all(len(conj) == 2 for conj in prop.disjuncts)
    # every combination of one atom from each assert, in order
    firsts = [tuple(conj[0][0].tolist()) for conj in prop.disjuncts]
    assert firsts == [(1.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.0, 1.0)]


def test_nested_and_inside_or(tmp_path):
    prop = parse(tmp_path, "(assert (or (and (>= Y_0 0.0) (>= Y_1 0.0)) (>= Y_0 Y_1)))\n")
    assert [len(c) for c in prop.disjuncts] == [2, 1]


@pytest.mark.parametrize(
    "body, message",
    [
        ("(assert (>= Y_0 Y_1)", "unbalanced '\\('"),
        ("(assert (>= Y_0 Y_1)))\n", "unbalanced '\\)'"),
        ("", "no output constraint"),
        ("(assert (>= Y_0 Z_3))\n", "unsupported term 'Z_3'"),
        ("(assert (>= Y_0 X_0))\n", "mixes inputs and outputs"),
        ("(assert (>= (* Y_0 Y_1) 0))\n", "product of two variables"),
        ("(assert (>= (+ X_0 X_1) 0))\n(assert (>= Y_0 0))\n", "constraints over several inputs"),
        ("(assert (>= Y_7 0))\n", "Y_7 is used but not declared"),
        ("(assert (>= (exp Y_0) 0))\n", "unsupported term \\(exp Y_0\\)"),
        ("(assert (xor (>= Y_0 0.0)))\n", "starting with 'xor'"),
        ("(assert (>= X_0 3.0))\n(assert (>= Y_0 0.0))\n", "empty input box \\(X_0\\)"),
    ],
)
def test_malformed_files_fail_with_the_file_named(tmp_path, body, message):
    with pytest.raises(VnnlibError, match=message) as e:
        parse(tmp_path, body)
    assert "p.vnnlib" in str(e.value) and "\n" not in str(e.value)


def test_no_variables_declared(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text("(assert (>= 1.0 0.0))\n")
    with pytest.raises(VnnlibError, match="declares no X_i or no Y_j"):
        parse_vnnlib(path)


def test_numbers_in_scientific_notation(tmp_path):
    path = tmp_path / "p.vnnlib"
    text = HEAD.replace("(assert (<= X_0 1.0))", "(assert (<= X_0 1e-1))") + "(assert (>= Y_0 -2.5e+00))\n"
    path.write_text(text)
    prop = parse_vnnlib(path)
    assert np.isclose(prop.upper[0], 0.1) and prop.disjuncts[0][0][1] == -2.5


def test_linear_output_terms(tmp_path):
    """Sums, differences, negation and scaling by constants (as some benchmarks write atoms)."""
    ((c, d),) = parse(tmp_path, "(assert (>= (- (* 2 Y_0) Y_1) (+ 1 0.5)))\n").disjuncts[0]
    assert c.tolist() == [2.0, -1.0] and d == 1.5
    ((c, d),) = parse(tmp_path, "(assert (<= (- Y_1) -3))\n").disjuncts[0]
    assert c.tolist() == [0.0, 1.0] and d == 3.0  # -Y_1 <= -3  <=>  Y_1 >= 3


def test_a_disjunction_of_input_boxes_gives_regions(tmp_path):
    """ACAS Xu property 6's form: (or (and box 1) (and box 2)) beside the plain bounds."""
    prop = parse(
        tmp_path,
        "(assert (or (and (<= X_0 0.25)) (and (>= X_0 0.75) (<= X_1 0.0))))\n"
        "(assert (or (>= Y_0 Y_1) (>= Y_1 9)))\n",
    )
    assert len(prop.regions) == 2 and prop.n_inputs == 2
    first, second = prop.regions
    assert first.lower.tolist() == [0.0, -2.0] and first.upper.tolist() == [0.25, 0.5]
    assert second.lower.tolist() == [0.75, -2.0] and second.upper.tolist() == [1.0, 0.0]
    assert len(first.disjuncts) == len(second.disjuncts) == 2
    with pytest.raises(VnnlibError, match="2 input boxes"):
        _ = prop.lower


def test_a_disjunct_whose_box_is_empty_is_dropped(tmp_path):
    prop = parse(tmp_path, "(assert (or (and (>= X_0 5.0) (>= Y_0 0)) (and (<= X_0 0.5) (>= Y_1 0))))\n")
    assert len(prop.regions) == 1 and prop.upper[0] == 0.5
    assert prop.disjuncts[0][0][0].tolist() == [0.0, 1.0]


def test_shared_benchmark_properties_parse(vnncomp_dir):
    files = sorted(vnncomp_dir.glob("**/*.vnnlib"))
    files += sorted((vnncomp_dir.parent / "vnncomp2022").glob("**/*.vnnlib"))[:40]
    assert len(files) > 20
    for f in files:
        prop = parse_vnnlib(f)
        assert prop.regions and all(r.disjuncts for r in prop.regions)
