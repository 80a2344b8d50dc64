"""ONNX front end and VNN-LIB: converted models match onnxruntime, bounds are sound, properties
are decided with checked answers, and third-party networks work end to end."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nonuniform import UnsupportedModelError, certify_boxes, load_model
from nonuniform.attacks.pgd import falsify_boxes
from nonuniform.verify.decide import decide
from nonuniform.verify.vnnlib import VnnlibError, parse_vnnlib
from tests.graph_nets import PoolNet, TinyResNet
from tests.nets import assert_bounds_sound, random_boxes

ort = pytest.importorskip("onnxruntime")


def export(model: nn.Module, shape, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, *shape), str(path), dynamo=False)
    return str(path)


def run_ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path))
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


@pytest.mark.parametrize("net", [TinyResNet(seed=3), PoolNet(seed=4)], ids=["resnet", "poolnet"])
def test_exported_pytorch_models_match_onnxruntime_and_bound_soundly(net, tmp_path):
    path = export(net, (1, 8, 8), tmp_path / "m.onnx")
    model, card = load_model(path, domain=(0.0, 1.0))
    assert card.input_shape == (1, 8, 8) and card.arch == "onnx" and len(card.sha256) == 64
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    ref = np.concatenate([run_ort(path, x[i : i + 1]) for i in range(5)])
    assert np.allclose(model(torch.from_numpy(x)).detach().numpy(), ref, atol=1e-5)
    lower, upper = random_boxes((1, 8, 8), batch=2, seed=5, max_radius=0.1)
    for method in ("ibp", "crown", "alpha-crown"):
        assert_bounds_sound(model, lower, upper, method, f"onnx/{method}", samples=2000)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def handmade_model(path) -> str:
    """Operators the PyTorch exporter does not emit here: Gemm without transB, MatMul, Sub/Div
    by constants, Transpose, Pad, BatchNormalization, AveragePool, GlobalAveragePool, Concat,
    LeakyRelu, Sigmoid, Tanh, and a Reshape whose shape is computed from Shape/Gather."""
    rng = np.random.default_rng(1)
    n = helper.make_node
    nodes = [
        n("Sub", ["x", "c_half"], ["s"]),
        n("Div", ["s", "c_std"], ["d"]),
        n("Transpose", ["d"], ["t"], perm=[0, 1, 3, 2]),
        n("Pad", ["t", "pads"], ["p"], mode="constant"),
        n("Conv", ["p", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[1, 1], pads=[0, 0, 0, 0]),
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-5),
        n("LeakyRelu", ["bn"], ["a1"], alpha=0.1),
        n("AveragePool", ["a1"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        n("GlobalAveragePool", ["a1"], ["gap"]),
        n("Shape", ["ap"], ["shp"]),
        n("Gather", ["shp", "zero"], ["batch"], axis=0),
        n("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        n("Concat", ["batch1", "minus1"], ["target"], axis=0),
        n("Reshape", ["ap", "target"], ["flat"]),
        n("Flatten", ["gap"], ["gflat"], axis=1),
        n("Concat", ["flat", "gflat"], ["cat"], axis=1),
        n("Gemm", ["cat", "w2", "b2"], ["g2"], transB=0),
        n("Sigmoid", ["g2"], ["s2"]),
        n("MatMul", ["s2", "w3"], ["m3"]),
        n("Tanh", ["m3"], ["t3"]),
        n("Mul", ["t3", "c_two"], ["y"]),
    ]
    inits = [
        _const("c_half", 0.5),
        _const("c_std", [[[0.3]]]),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "pads"),
        _const("w1", rng.normal(size=(3, 1, 3, 3))),
        _const("b1", rng.normal(size=3) * 0.1),
        _const("bn_s", rng.uniform(0.5, 1.5, 3)),
        _const("bn_b", rng.normal(size=3) * 0.1),
        _const("bn_m", rng.normal(size=3) * 0.1),
        _const("bn_v", rng.uniform(0.5, 1.5, 3)),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes0"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus1"),
        _const("w2", rng.normal(size=(3 * 4 * 4 + 3, 10)) * 0.3),
        _const("b2", rng.normal(size=10) * 0.1),
        _const("w3", rng.normal(size=(10, 4))),
        _const("c_two", 2.0),
    ]
    graph = helper.make_graph(
        nodes,
        "handmade",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return str(path)


def test_handmade_operators_match_onnxruntime_and_bound_soundly(tmp_path):
    path = handmade_model(tmp_path / "h.onnx")
    model, _ = load_model(path)
    x = np.random.default_rng(2).random((4, 1, 8, 8)).astype(np.float32)
    ref = np.concatenate([run_ort(path, x[i : i + 1]) for i in range(4)])
    assert np.allclose(model(torch.from_numpy(x)).detach().numpy(), ref, atol=1e-5)
    lower, upper = random_boxes((1, 8, 8), batch=2, seed=6, max_radius=0.1)
    assert_bounds_sound(model, lower, upper, "crown", "handmade", samples=2000)


def test_unsupported_onnx_operator_is_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["g"], transB=1), helper.make_node("Sin", ["g"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [_const("w", np.ones((2, 3)))],
    )
    path = tmp_path / "s.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(UnsupportedModelError, match=r"node 'y' \(Sin, 2 of 2\) is not supported"):
        load_model(str(path))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UnsupportedModelError, match="not a readable ONNX file"):
        load_model(str(tmp_path / "junk.onnx"))


def test_vnnlib_parser_reads_disjunctions_and_constants(tmp_path):
    text = """; comment
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 0.5))
(assert (>= X_0 -0.5))
(assert (<= X_1 1.0))
(assert (>= 0.0 X_1))
(assert (>= X_1 -1.0))
(assert (or (and (<= Y_0 Y_1) (>= Y_2 3.0)) (and (>= Y_2 Y_0))))
"""
    path = tmp_path / "p.vnnlib"
    path.write_text(text)
    prop = parse_vnnlib(path)
    assert prop.lower.tolist() == [-0.5, -1.0] and prop.upper.tolist() == [0.5, 0.0]
    (c1, d1), (c2, d2) = prop.disjuncts[0]
    assert c1.tolist() == [-1, 1, 0] and d1 == 0 and c2.tolist() == [0, 0, 1] and d2 == 3.0
    assert prop.disjuncts[1][0][0].tolist() == [-1, 0, 1]
    path.write_text(text.replace("(assert (>= X_1 -1.0))", ""))
    with pytest.raises(VnnlibError, match="X_1 has no lower"):
        parse_vnnlib(path)


def test_vnnlib_decisions_on_a_small_net_are_right(tmp_path):
    """unsat on a tiny box (checked by sampling), sat with a counterexample on a huge one."""
    torch.manual_seed(0)  # before the net: its weights decide whether the huge box holds a counterexample
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x0 = torch.tensor([[0.3, -0.2]])
    c = int(net(x0).argmax())
    head = "".join(f"(declare-const X_{i} Real)\n" for i in range(2))
    head += "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
    region = " ".join(f"(and (>= Y_{j} Y_{c}))" for j in range(3) if j != c)
    for eps, expect in ((1e-3, "unsat"), (50.0, "sat")):
        bounds = "".join(
            f"(assert (<= X_{i} {float(x0[0, i]) + eps}))\n(assert (>= X_{i} {float(x0[0, i]) - eps}))\n"
            for i in range(2)
        )
        (tmp_path / "p.vnnlib").write_text(head + bounds + f"(assert (or {region}))\n")
        prop = parse_vnnlib(tmp_path / "p.vnnlib")
        r = decide(net, prop, (2,), timeout=30)
        assert r.status == expect
        if expect == "sat":
            y = net(torch.tensor(r.counterexample, dtype=torch.float32)[None])[0]
            assert (r.counterexample >= prop.lower).all() and (r.counterexample <= prop.upper).all()
            assert int(y.argmax()) != c and r.vnncomp_text().startswith("sat\n((X_0 ")
        else:
            pts = x0 + (torch.rand(5000, 2) * 2 - 1) * eps
            assert (net(pts).argmax(1) == c).all()


def test_third_party_networks_match_onnxruntime(vnncomp_dir):
    rng = np.random.default_rng(3)
    for path in sorted(vnncomp_dir.glob("*/*.onnx")):
        model, card = load_model(str(path))
        x = rng.random((1, *card.input_shape)).astype(np.float32)
        ours = model(torch.from_numpy(x)).detach().numpy()
        assert np.allclose(ours, run_ort(path, x), atol=1e-4 * (1 + np.abs(ours).max())), path.name


def test_third_party_vnnlib_answers_are_checked(vnncomp_dir):
    """Every shared MNIST instance is decided; a sat counterexample satisfies the property under
    onnxruntime and an unsat box survives attacks."""
    rows = list(csv.reader(open(vnncomp_dir / "verivital" / "instances.csv")))
    answers = []
    for net, spec, _ in rows:
        path = vnncomp_dir / "verivital" / net
        model, card = load_model(str(path))
        prop = parse_vnnlib(vnncomp_dir / "verivital" / spec)
        r = decide(model, prop, card.input_shape, timeout=60)
        answers.append(r.status)
        lo = torch.tensor(prop.lower, dtype=torch.float32).reshape(1, *card.input_shape)
        hi = torch.tensor(prop.upper, dtype=torch.float32).reshape(1, *card.input_shape)
        if r.status == "sat":
            y = run_ort(path, r.counterexample.reshape(1, *card.input_shape))[0]
            assert any(all(c @ y >= d for c, d in conj) for conj in prop.disjuncts)
        elif r.status == "unsat":
            label = int(model((lo + hi) / 2).argmax())
            assert not falsify_boxes(model, lo, hi, torch.tensor([label]), restarts=2, steps=30).broken.any()
    assert "unknown" not in answers and "timeout" not in answers


def test_residual_module_certifies_from_python_and_from_the_cli(tmp_path):
    """A non-Sequential ResNet-style module: certify_boxes traces it; exported to ONNX it goes
    through `certify` and `verify` on the command line."""
    from nonuniform_cli.main import app
    from typer.testing import CliRunner

    net = TinyResNet(seed=5)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    boxes = certify_boxes(net, x, iterations=15)
    assert boxes.certified.all()
    lo, hi = torch.tensor(boxes.lower), torch.tensor(boxes.upper)
    assert not falsify_boxes(net, lo, hi, torch.tensor(boxes.preds), restarts=3, steps=40).broken.any()
    path = export(net, (1, 8, 8), tmp_path / "resnet.onnx")
    np.savez(tmp_path / "data.npz", inputs=x.numpy())
    runner = CliRunner()
    args = ["certify", path, "--out", str(tmp_path / "run"), "--dataset", str(tmp_path / "data.npz")]
    r = runner.invoke(app, [*args, "--iterations", "15", "--domain", "0,1", "--no-figures"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", str(tmp_path / "run" / "boxes.npz")])
    assert r.exit_code == 0 and "OK" in r.output, r.output
    r = runner.invoke(app, ["certify", path, "--out", str(tmp_path / "run2")])
    assert r.exit_code == 2 and "--domain" in r.output
