"""Bad input and misuse: one plain line on stderr, exit code 2, no traceback, nothing lost.

Table-driven over the commands' options and files, plus resume integrity and property-based
fuzzing (Hypothesis) of the option parsers and the boxes-file reader."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nonuniform_cli.main import UserError, app, parse_domain, parse_shape
from nonuniform_cli.options import parse_output_range
from typer.testing import CliRunner

from nonuniform import CertifiedBoxes
from nonuniform.certify.result import BoxesFileError
from nonuniform.certify.settings import CertifyConfig
from nonuniform.zoo.inputs import InputError, select_indices

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(res, needle: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert needle in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert "allow_pickle" not in res.output, "never advise loading untrusted pickles"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("files"))


def make_files(d):
    """The bad files of CASES in folder ``d`` (also used by experiments/bad_inputs.py)."""
    (d / "a_file").write_text("x")
    (d / "random.pt").write_bytes(np.random.default_rng(0).bytes(500))
    (d / "random.npz").write_bytes(np.random.default_rng(1).bytes(500))
    np.savez(d / "nan.npz", inputs=np.full((2, 1, 28, 28), np.nan, dtype=np.float32), labels=np.zeros(2))
    np.savez(d / "labels.npz", inputs=np.zeros((2, 1, 28, 28), dtype=np.float32), labels=np.array([3, 12]))
    np.savez(d / "short.npz", inputs=np.zeros((3, 1, 28, 28), dtype=np.float32), labels=np.array([1, 2]))
    np.savez(d / "none.npz", inputs=np.zeros((2, 784), dtype=np.float32), labels=np.array([1, 2]))
    good = run("certify", "mnist-mlp", "--out", d / "run", "--count", 1, "--iterations", 2, "--no-figures")
    assert good.exit_code == 0, good.output
    raw = (d / "run" / "boxes.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    boxes = CertifiedBoxes.load(d / "run" / "boxes.npz")
    boxes.labels = np.zeros(5, dtype=np.int64)  # inconsistent lengths
    boxes.save(d / "inconsistent.npz")
    none = CertifiedBoxes.load(d / "run" / "boxes.npz")
    none.certified[:] = False
    none.save(d / "uncertified.npz")
    return d


CASES = [
    (
        ["certify", "mnist-mlp", "--out", "{d}/o_bab", "--bab", "--bab-time", "0"],
        "--bab-time must be a positive",
    ),
    (["verify", "{d}/run/boxes.npz", "--bab-time", "-1"], "--bab-time must be a positive"),
    (
        ["certify", "mnist-mlp", "--out", "{d}/o_js", "--no-joint-slopes"],
        "only applies to --method alpha-crown",
    ),
    (
        ["certify", "mnist-mlp", "--out", "{d}/o_as", "--alpha-steps", "2"],
        "--alpha-steps only applies to --method alpha-crown",
    ),
    (
        [
            "certify",
            "mnist-lstm",
            "--out",
            "{d}/o_as2",
            "--method",
            "alpha-crown",
            "--alpha-steps-check",
            "-1",
        ],
        "--alpha-steps-check must be 0 or more",
    ),
    (["certify", "mnist-mlp", "--out", "{d}/a_file"], "is a file, not a directory"),
    (["certify", "mnist-mlp", "--out", "{d}/o1", "--device", "tpu"], "unknown device 'tpu'"),
    (["certify", "mnist-mlp", "--out", "{d}/o2", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["certify", "mnist-mlp", "--out", "{d}/o3", "--batch-size", "-3"], "--batch-size must be at least 1"),
    (["certify", "mnist-mlp", "--out", "{d}/o4", "--iterations", "-5"], "--iterations must be 0 or more"),
    (["certify", "mnist-mlp", "--out", "{d}/o4b", "--shape-steps", "-1"], "--shape-steps must be 0 or more"),
    (["certify", "fashion-mlp", "--out", "{d}/o5"], "trained on fashion-mnist, not mnist"),
    (["certify", "{d}/random.pt", "--out", "{d}/o6"], "not a loadable nonuniform checkpoint"),
    (["certify", "mnist-mlp", "--out", "{d}/o7", "--dataset", "{d}/nan.npz"], "NaN/inf input values"),
    (["certify", "mnist-mlp", "--out", "{d}/o8", "--dataset", "{d}/labels.npz"], "labels must lie in 0..9"),
    (["certify", "mnist-mlp", "--out", "{d}/o9", "--dataset", "{d}/short.npz"], "3 inputs but 2 labels"),
    (["certify", "mnist-mlp", "--out", "{d}/o10", "--domain", "1,0"], "every LO must be below"),
    (["certify", "mnist-mlp", "--out", "{d}/o11", "--input-shape", "a,b"], "bad --input-shape"),
    (["certify", "[red]model[/x].pt", "--out", "{d}/o12"], "'[red]model[/x].pt' is neither"),
    (["verify", "{d}/truncated.npz"], "damaged or truncated boxes file"),
    (["verify", "{d}/inconsistent.npz"], "inconsistent boxes file"),
    (["verify", "{d}/random.npz"], "damaged or truncated boxes file"),
    (["rank", "{d}/uncertified.npz", "--out", "{d}/r1"], "ranking needs at least two"),
    (["rank", "{d}/run/boxes.npz", "--out", "{d}/a_file"], "is a file, not a directory"),
    (["explain", "{d}/run/boxes.npz", "--out", "{d}/x1", "--k", "1.5"], "fractions must lie in (0, 1)"),
    (["explain", "{d}/run/boxes.npz", "--out", "{d}/x2", "--k", "0"], "counts be at least 1"),
    (["explain", "{d}/uncertified.npz", "--out", "{d}/x3"], "no certified box"),
    (["train", "--arch", "mlp:8:relu", "--out", "{d}/t.pt", "--batch-size", "0"], "--batch-size must be"),
    (["train", "--arch", "mlp:8:relu", "--out", "{d}/nodir/t.pt"], "does not exist"),
    (["vnnlib", "{d}/a_file", "{d}/a_file"], "declares no X_i or no Y_j"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2(files, args, needle):
    res = run(*(a.format(d=files) for a in args))
    assert_one_line_error(res, needle)


def test_resume_refuses_other_settings_and_keeps_what_was_written(tmp_path):
    out = tmp_path / "run"
    base = ["certify", "mnist-mlp", "--out", out, "--count", 2, "--batch-size", 1]
    assert run(*base, "--iterations", 3, "--no-figures").exit_code == 0
    parts = sorted((out / "parts").glob("batch_*.npz"))
    before = {p.name: p.read_bytes() for p in parts}
    for extra, name in [
        (["--iterations", 3, "--method", "fastlin"], "options.method"),
        (["--iterations", 4], "options.iterations"),
        (["--iterations", 3, "--shape-steps", 2], "options.shape_steps"),
        (["--iterations", 3, "--asymmetric"], "options.asymmetric"),
        (["--iterations", 3, "--no-clip"], "options.clip"),
        (["--iterations", 3, "--seed", 1], "options.seed"),
        (["--iterations", 3, "--dataset", "fashion-mnist"], "trained on mnist"),
    ]:
        assert_one_line_error(run(*base, "--resume", *extra), name)
    assert_one_line_error(run(*base, "--iterations", 3), "already holds results")
    assert {p.name: p.read_bytes() for p in sorted((out / "parts").glob("batch_*.npz"))} == before


def test_damaged_part_is_recomputed_and_results_match(tmp_path):
    out, ref = tmp_path / "run", tmp_path / "ref"
    base = ["--count", 2, "--batch-size", 1, "--iterations", 3, "--no-figures"]
    assert run("certify", "mnist-mlp", "--out", ref, *base).exit_code == 0
    assert run("certify", "mnist-mlp", "--out", out, *base).exit_code == 0
    (out / "boxes.npz").unlink()
    part = sorted((out / "parts").glob("batch_*.npz"))[1]
    part.write_bytes(part.read_bytes()[:100])  # a part cut short
    res = run("certify", "mnist-mlp", "--out", out, *base, "--resume")
    assert res.exit_code == 0, res.output
    # the library's warning, as the CLI shows it: one plain line
    assert [ln for ln in res.output.splitlines() if "damaged or truncated boxes file" in ln][0].startswith(
        "warning: "
    )
    assert (out / "parts" / "damaged" / part.name).exists()
    a, b = CertifiedBoxes.load(out / "boxes.npz"), CertifiedBoxes.load(ref / "boxes.npz")
    assert np.array_equal(a.lower, b.lower) and np.array_equal(a.upper, b.upper)


def test_a_failed_run_does_not_block_the_next(tmp_path):
    out = tmp_path / "run"
    (out / "parts").mkdir(parents=True)  # what a run that died before its first batch leaves
    res = run("certify", "mnist-mlp", "--out", out, "--count", 1, "--iterations", 2, "--no-figures")
    assert res.exit_code == 0, res.output


def test_version_and_module_entry_point():
    import subprocess
    import sys

    import nonuniform

    res = run("--version")
    assert res.exit_code == 0 and nonuniform.__version__ in res.output
    out = subprocess.run([sys.executable, "-m", "nonuniform", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and nonuniform.__version__ in out.stdout


# -- property-based fuzzing -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20), st.one_of(st.none(), st.integers(-5, 200)), st.integers(1, 100))
def test_select_indices_only_raises_input_errors(spec, count, available):
    try:
        idx = select_indices(spec or None, count, available)
    except InputError:
        return
    assert idx.size > 0 and idx.min() >= 0 and idx.max() < available


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789,:x-. einfa", max_size=24))
def test_parse_shape_domain_and_output_range_only_raise_user_errors(text):
    for parse in (parse_shape, parse_domain, parse_output_range):
        try:
            parsed = parse(text)
        except UserError:
            continue
        if parse is parse_output_range and parsed is not None:  # what it accepts, the library accepts
            lo, hi = parsed
            assert all(a < b for a, b in zip(lo, hi)) and CertifyConfig(output_range=parsed).output_range


def _boxes_bytes() -> bytes:
    b = CertifiedBoxes(
        inputs=np.zeros((2, 3), np.float32),
        lower=np.zeros((2, 3), np.float32),
        upper=np.ones((2, 3), np.float32),
        labels=np.zeros(2, np.int64),
        preds=np.zeros(2, np.int64),
        certified=np.ones(2, bool),
        log_volume=np.zeros(2),
        uniform_radius=np.zeros(2),
        uniform_log_volume=np.zeros(2),
        apothem=np.zeros(2),
        margin=np.zeros(2),
        used_uniform=np.zeros(2, bool),
        iterations=np.zeros(2, np.int64),
        seconds=np.zeros(2),
        indices=np.arange(2),
        free=np.ones(3, bool),
    )
    buf = io.BytesIO()
    b.save(buf)
    return buf.getvalue()


GOOD = _boxes_bytes()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_boxes_reader_rejects_damaged_files_in_one_line(tmp_path_factory, data):
    raw = bytearray(GOOD)
    kind = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    else:
        raw = bytearray(data.draw(st.binary(max_size=400)))
    path = tmp_path_factory.mktemp("fuzz") / "b.npz"
    path.write_bytes(bytes(raw))
    try:
        boxes = CertifiedBoxes.load(path)
    except BoxesFileError as e:
        assert "\n" not in str(e)
        return
    assert len(boxes.inputs) == len(boxes.labels)  # whatever loads is consistent


def test_boxes_reader_refuses_pickled_objects(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, inputs=np.array([object()], dtype=object))
    with pytest.raises(BoxesFileError):
        CertifiedBoxes.load(path)
    assert zipfile.is_zipfile(path)


# -- inputs a new user brought (bad files, wrong shapes, odd models) -------------------------------


@pytest.fixture(scope="module")
def more_files(tmp_path_factory):
    return make_more_files(tmp_path_factory.mktemp("more"))


def make_more_files(d):
    """The files of MORE_CASES in folder ``d``."""
    import warnings

    import torch
    from torch import nn

    np.savez(d / "good.npz", inputs=np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32))
    raw = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 3])
    np.savez(d / "empty.npz")
    np.savez(d / "strings.npz", inputs=np.zeros((2, 784), dtype=np.float32), labels=np.array(["cat", "dog"]))
    np.savez(d / "objects.npz", inputs=np.array([None, 1], dtype=object))
    np.savez(d / "wrong_size.npz", inputs=np.zeros((2, 100), dtype=np.float32))
    np.savez(d / "domain.npz", lo=np.zeros((1, 28, 28)), hi=np.full((1, 28, 28), np.inf))
    regression = nn.Sequential(nn.Flatten(), nn.Linear(784, 1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(regression, torch.zeros(1, 1, 28, 28), str(d / "regression.onnx"), dynamo=False)
        lstm = nn.LSTM(4, 3, batch_first=True)
        torch.onnx.export(lstm, torch.zeros(1, 5, 4), str(d / "lstm.onnx"), dynamo=False)
    (d / "outdir").mkdir()
    (d / "instances.csv").write_text("regression.onnx,p.vnnlib,10\n")
    (d / "bad_instances.csv").write_text("regression.onnx,p.vnnlib\n")
    (d / "zero_instances.csv").write_text("regression.onnx,p.vnnlib,0\n")
    head = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
    (d / "p.vnnlib").write_text(head + "(assert (>= Y_0 3))\n")
    (d / "mixed.vnnlib").write_text(head + "(assert (>= Y_0 X_0))\n")
    np.save(d / "short.npy", np.ones(5, dtype=bool))
    np.save(d / "floats.npy", np.zeros((1, 28, 28)))
    return d


MORE_CASES = [
    (
        ["certify", "mnist-mlp", "--out", "{d}/a1", "--dataset", "{d}/truncated.npz"],
        "not a readable .npz file",
    ),
    (["certify", "mnist-mlp", "--out", "{d}/a2", "--dataset", "{d}/empty.npz"], "needs an array 'inputs'"),
    (
        ["certify", "mnist-mlp", "--out", "{d}/a3", "--dataset", "{d}/strings.npz"],
        "'labels' must be a 1-D array",
    ),
    (["certify", "mnist-mlp", "--out", "{d}/a4", "--dataset", "{d}/objects.npz"], "holds Python objects"),
    (
        ["certify", "mnist-mlp", "--out", "{d}/a5", "--dataset", "{d}/wrong_size.npz"],
        "do not fit the model's input",
    ),
    (["certify", "mnist-mlp", "--out", "{d}/a6", "--domain", "nan,1"], "every end must be a finite number"),
    (["certify", "mnist-mlp", "--out", "{d}/a7", "--domain", "0,inf"], "every end must be a finite number"),
    (
        ["certify", "mnist-mlp", "--out", "{d}/a8", "--domain", "0:1,0:1,0:1"],
        "one (lo, hi) pair per channel (1 here)",
    ),
    (["certify", "mnist-mlp", "--out", "{d}/a9", "--domain", "{d}/domain.npz"], "must be finite numbers"),
    (
        ["certify", "{d}/regression.onnx", "--out", "{d}/a10", "--domain", "0,1"],
        "needs a classifier with at least two",
    ),
    (["certify", "{d}/lstm.onnx", "--out", "{d}/a11", "--domain", "0,1"], "recurrent LSTM"),
    (["vnnlib", "{d}/regression.onnx", "{d}/p.vnnlib", "--timeout", "0"], "--timeout must be a positive"),
    (["vnnlib", "{d}/regression.onnx", "{d}/p.vnnlib", "--timeout", "-3"], "--timeout must be a positive"),
    (["vnnlib", "{d}/regression.onnx", "{d}/p.vnnlib", "--out", "{d}/outdir"], "is a directory"),
    (["certify", "mnist-mlp", "--out", "{d}/s1", "--objective", "biggest"], "--objective must be volume"),
    (["certify", "mnist-mlp", "--out", "{d}/s2", "--groups", "patch:0x3"], "--groups patch:0x3 needs"),
    (["certify", "mnist-mlp", "--out", "{d}/s3", "--frozen", "{d}/missing.npy"], "no such file"),
    (
        ["certify", "mnist-mlp", "--out", "{d}/s4", "--frozen", "{d}/short.npy"],
        "the frozen mask has 5 values",
    ),
    (
        ["certify", "mnist-mlp", "--out", "{d}/s5", "--groups", "{d}/floats.npy"],
        "--groups must hold integers",
    ),
    (["certify", "mnist-mlp", "--out", "{d}/s6", "--floor", "-1"], "--floor must be a radius >= 0"),
    (["certify", "mnist-mlp", "--out", "{d}/s7", "--weights", "{d}/short.npy"], "--weights must be 784"),
    (["vnnlib", "{d}/regression.onnx"], "give NET and PROP"),
    (["vnnlib", "--instances", "{d}/instances.csv"], "--instances needs --out RESULTS.csv"),
    (["vnnlib", "--instances", "{d}/instances.csv", "--out", "{d}/outdir"], "is a directory"),
    (["vnnlib", "--instances", "{d}/bad_instances.csv", "--out", "{d}/r.csv"], "row 1 has 2 fields"),
    (["vnnlib", "--instances", "{d}/zero_instances.csv", "--out", "{d}/r.csv"], "time-out must be positive"),
    (
        [
            "vnnlib",
            "{d}/regression.onnx",
            "{d}/p.vnnlib",
            "--instances",
            "{d}/instances.csv",
            "--out",
            "{d}/r.csv",
        ],
        "not both",
    ),  # fmt: skip
    (
        ["vnnlib", "{d}/regression.onnx", "{d}/p.vnnlib", "--branching", "random"],
        "--branching must be one of",
    ),
    (["vnnlib", "{d}/regression.onnx", "{d}/mixed.vnnlib"], "mixes inputs and outputs"),
    *(
        (
            [
                "certify",
                "{d}/regression.onnx",
                "--out",
                f"{{d}}/r{i}",
                "--domain",
                "0,1",
                "--output-range",
                rng,
            ],
            needle,
        )
        for i, (rng, needle) in enumerate(
            [
                ("1,0", "every LO must be below its HI"),
                ("a,b", "bad --output-range 'a,b'"),
                ("-inf,inf", "at least one end must be finite"),
                ("0:1,0:1", "one number or one per output (1 here)"),
            ]
        )
    ),
]


def test_a_regression_model_is_certified_for_an_output_range(more_files, tmp_path):
    """The one-output model MORE_CASES refuses for margins, certified for an output range; the
    dataset's labels are not read; verify re-checks with the recorded range; explain's
    evaluation against a prediction is refused."""
    import json

    out = tmp_path / "run"
    res = run("certify", more_files / "regression.onnx", "--out", out, "--domain", "0,1", "--count", 3,
              "--output-range", "-100,100", "--no-figures", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["summary"]
    assert summary["certified"] == 3 and summary["settings"]["output_range"] == [[-100.0], [100.0]]
    res = run("verify", out / "boxes.npz", more_files / "regression.onnx")
    assert res.exit_code == 0 and "OK" in res.output, res.output
    assert_one_line_error(run("explain", out / "boxes.npz", "--out", tmp_path / "e"), "--no-evaluate")
    # certified explanations prove the range too, and verify re-proves them with it
    res = run("explain", out / "boxes.npz", "--out", tmp_path / "c", "--certified", "--eps", "0.01")
    assert res.exit_code == 0, res.output
    res = run("verify", tmp_path / "c" / "certified.npz", more_files / "regression.onnx")
    assert res.exit_code == 0 and "OK" in res.output, res.output


@pytest.mark.parametrize("args,needle", MORE_CASES, ids=[f"more-{i}" for i in range(len(MORE_CASES))])
def test_more_bad_input_is_one_line_exit_2_and_writes_nothing(more_files, args, needle):
    res = run(*(a.format(d=more_files) for a in args))
    assert_one_line_error(res, needle)
    if "--out" in args and args[0] == "certify":
        out = args[args.index("--out") + 1].format(d=more_files)
        assert not (more_files / out).exists(), "a refused run left a directory behind"


def test_rank_compare_refuses_boxes_of_other_input_shapes(tmp_path):
    from pathlib import Path

    golden = Path(__file__).resolve().parents[1] / "data" / "golden" / "boxes.npz"
    other = CertifiedBoxes.load(golden)
    flat = tmp_path / "flat.npz"
    n = len(other)
    for key in ("inputs", "lower", "upper"):
        setattr(other, key, getattr(other, key).reshape(n, -1))
    other.free = other.free.reshape(-1)
    other.save(flat)
    res = run("rank", golden, "--compare", flat, "--out", tmp_path / "r")
    assert_one_line_error(res, "different shapes")


def test_resume_with_another_batch_size_says_which_were_used(tmp_path):
    out = tmp_path / "run"
    base = ["certify", "mnist-mlp", "--out", out, "--iterations", 1, "--no-figures", "--json"]
    assert run(*base, "--count", 1, "--batch-size", 1).exit_code == 0
    (out / "boxes.npz").unlink()
    res = run(*base, "--count", 3, "--batch-size", 2, "--resume")
    assert res.exit_code == 0, res.output
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["batch_sizes"] == [1, 2] and summary["settings"]["batch_size"] == 2


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_fuzzed_input_files_only_raise_input_errors(tmp_path_factory, data):
    """Random bytes as a --dataset .npz, a --domain file, a .vnnlib and an .onnx: a clear error
    class (one line at the CLI), never a traceback."""
    from nonuniform.frontends.onnx_read import load_onnx
    from nonuniform.ir.network import UnsupportedModelError
    from nonuniform.verify.vnnlib import VnnlibError, parse_vnnlib
    from nonuniform.zoo.inputs import load_inputs, read_domain

    d = tmp_path_factory.mktemp("fuzz")
    for name, call, errors in [
        ("x.npz", lambda p: load_inputs(str(p), input_shape=(1, 28, 28)), InputError),
        ("d.npz", read_domain, InputError),
        ("d.npy", read_domain, InputError),
        ("p.vnnlib", parse_vnnlib, VnnlibError),
        ("m.onnx", load_onnx, UnsupportedModelError),
    ]:
        path = d / name
        path.write_bytes(data)
        try:
            call(path)
        except errors as e:
            assert "\n" not in str(e)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "(",
                ")",
                "assert",
                "declare-const",
                "X_0",
                "Y_0",
                "Y_1",
                "<=",
                ">=",
                "and",
                "or",
                "+",
                "-",
                "*",
                "X_1",
                "0.5",
                "-1",
                "Real",
                " ",
                "\n",
                ";",
            ]
        ),
        max_size=40,
    )  # fmt: skip
)
def test_fuzzed_vnnlib_text_only_raises_vnnlib_errors(tmp_path_factory, tokens):
    from nonuniform.verify.vnnlib import VnnlibError, parse_vnnlib

    path = tmp_path_factory.mktemp("v") / "p.vnnlib"
    path.write_text(" ".join(tokens))
    try:
        parse_vnnlib(path)
    except VnnlibError:
        pass


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["inputs", "labels", "images", "lo", "hi", "lower", "upper"]), max_size=3, unique=True
    ),
    st.integers(0, 3),
    st.sampled_from(["f4", "u1", "i8", "U3", "b1", "c8"]),
)
def test_fuzzed_npz_contents_only_raise_input_errors(tmp_path_factory, keys, ndim, dtype):
    """Well-formed .npz files with the wrong arrays, shapes or types."""
    from nonuniform.zoo.inputs import load_inputs, read_domain

    path = tmp_path_factory.mktemp("npz") / "x.npz"
    np.savez(path, **{k: np.zeros((2,) * ndim, dtype=dtype) for k in keys})
    for call in (lambda p: load_inputs(str(p), input_shape=(1, 28, 28)), read_domain):
        try:
            call(path)
        except InputError as e:
            assert "\n" not in str(e)
