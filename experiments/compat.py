"""The compatibility zoo as a table: every model of ``tests/frontends/zoo.py`` from Python and from
both ONNX exporters, checked against PyTorch / onnxruntime, certified and verified.

Run alone: ``.venv/bin/python experiments/compat.py`` (about a minute on 2 cores); writes
``experiments/results/compat.md``. The test suite checks the same models (``test_zoo.py``) with
sampled-point, corner and PGD soundness checks on top.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nonuniform import BoundedModel, certify_boxes, load_model, verify_boxes  # noqa: E402
from nonuniform.ir.network import apply_output_transform  # noqa: E402
from tests.frontends.zoo import ZOO, build  # noqa: E402


def one_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:140]


def onnx_check(model, shape, x, dynamo: bool, folder: Path) -> str:
    import onnxruntime as ort

    path = folder / f"{'dynamo' if dynamo else 'legacy'}.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kw = {} if dynamo else {"dynamic_axes": {"x": {0: "n"}, "y": {0: "n"}}}
            torch.onnx.export(model, torch.zeros(1, *shape), str(path), dynamo=dynamo, input_names=["x"],
                              output_names=["y"], **kw)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the exporter's own failure, reported as such
        return f"export fails: {one_line(e)}"
    try:
        net, _ = load_model(str(path), domain=(0.0, 1.0))
    except Exception as e:  # noqa: BLE001
        return f"refused: {one_line(e)}"
    xb = x[:1] if dynamo else x
    ref = ort.InferenceSession(str(path)).run(None, {"x": xb.numpy()})[0]
    err = float(np.abs(net(xb.double()).detach().numpy() - ref).max())
    boxes = certify_boxes(net, x[:2], None, batch_size=2)
    ok = verify_boxes(net, boxes, attack_restarts=2, attack_steps=20, corners=64).ok
    return f"loads, max diff {err:.0e}, verify {'OK' if ok else 'FAILED'}"


def row(name: str, model, shape) -> list[str]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, *shape, generator=g)
    try:
        net = BoundedModel(model, shape, torch.float64).net
    except Exception as e:  # noqa: BLE001
        return [name, f"refused: {one_line(e)}", "", "", "", "", ""]
    err = float(
        (apply_output_transform(net.output_transform, net.forward(x.double())) - model.double()(x.double()))
        .abs()
        .max()
    )
    model.float()
    t0 = time.perf_counter()
    boxes = certify_boxes(model, x, None, batch_size=4)
    seconds = (time.perf_counter() - t0) / len(x)
    ok = verify_boxes(model, boxes, attack_restarts=2, attack_steps=20, corners=64).ok
    gain = float(np.mean((boxes.log_volume - boxes.uniform_log_volume) / boxes.free.sum()))
    with tempfile.TemporaryDirectory() as tmp:
        legacy = onnx_check(model, shape, x, False, Path(tmp))
        dynamo = onnx_check(model, shape, x, True, Path(tmp))
    half = float(np.mean(boxes.log_volume / boxes.free.sum()) - np.log(2))
    certified = f"{int(boxes.certified.sum())}/4, {'OK' if ok else 'FAILED'}"
    return [
        name,
        f"loads, max diff {err:.0e}",
        certified,
        f"{half:.3f} (+{gain:.3f})",
        f"{seconds:.2f}",
        legacy,
        dynamo,
    ]


def main() -> None:
    torch.set_num_threads(2)
    head = [
        "model",
        "Python (fx / Sequential)",
        "certified, verify",
        "mean log half-width (gain over uniform)",
    ]
    head += ["s / image", "ONNX, legacy exporter", "ONNX, dynamo exporter"]
    rows = [row(name, build(name), shape) for name, (_, shape) in ZOO.items()]
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    lines = [
        "# Compatibility zoo",
        "",
        f"{datetime.date.today()}, commit {commit}, torch {torch.__version__}, 2 CPU threads, run alone "
        "(`experiments/compat.py`). Models of `tests/frontends/zoo.py` (seeded weights, untrained), "
        "4 random inputs in [0, 1] each, CROWN, default certify settings; ONNX files from "
        "`torch.onnx.export` (legacy: `dynamo=False`, dynamic batch; dynamo: `dynamo=True` with "
        "onnxscript), loaded by nonuniform, compared with onnxruntime, 2 images certified and verified. "
        "Max diff: largest |difference| of outputs.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    loaded = sum(r[1].startswith("loads") for r in rows)
    lines += [
        "",
        f"{loaded} of {len(rows)} models load from Python.",
    ]
    out = ROOT / "experiments" / "results" / "compat.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from nonuniform.runtime.threads import configure_threads

    configure_threads()  # the CLI's thread policy; importing the library sets none
    main()
