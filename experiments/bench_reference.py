"""Side by side with the reference LiRPA library (auto_LiRPA), when it is importable.

Same torch modules (the ONNX networks are rebuilt as plain ``nn.Conv2d``/``nn.Linear``/``nn.ReLU``
modules, checked against the ONNX forward), same per-feature boxes (radius ``eps * (0.5 + U[0, 1])``
per feature around real images or the VNN-LIB properties' centres), margin lower bounds
``f_c - f_j`` against the class predicted at the centre, one torch thread each. Each row times
CROWN without and with the gradient to the box, and alpha-CROWN (20 steps, lr 0.1) with its mean
gain over each tool's own CROWN; medians of ``--repeats`` runs are reported. By default each tool
runs in processes of its own, ``--blocks`` of them per row launched alternately (A B B A ...) and
one more for alpha-CROWN, so neither library's large blocks (nor alpha-CROWN's) move glibc's mmap
and trim thresholds for the other runs (a library runs alone in a user's program);
``--one-process`` interleaves the two tools' calls in this process instead (how the tables before
2026-12-03's seventh session were made). Both tools' bounds are checked against sampled points
and corners.

auto_LiRPA is never a dependency: build it from its public source in a private environment
(``python -m venv REF && REF/bin/pip install torch==2.13.0 numpy packaging appdirs pyyaml tqdm
graphviz && REF/bin/pip install --no-deps SRC``) and point ``--reference`` (or
``NONUNIFORM_REFERENCE``) at its ``site-packages``; it is appended to ``sys.path`` after this
project's packages. Run alone: ``.venv/bin/python experiments/bench_reference.py --reference
/work/reflirpa/venv/lib/python3.11/site-packages``; writes ``experiments/results/bench_reference.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from nonuniform import Normalize, load_model
from nonuniform.engine.bounds import BoundedModel, margin_spec
from nonuniform.ir.graph_ops import AddOp, ReshapeOp
from nonuniform.ir.ops import Activation, ConvOp, LinearOp
from nonuniform.relax.activations import PiecewiseLinear
from nonuniform.relax.pooling import MaxPool2d
from nonuniform.verify.vnnlib import parse_vnnlib
from nonuniform.zoo.samples import load_samples

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "vnncomp2021"
OUT = Path(__file__).parent / "results" / "bench_reference.md"


class _Add(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class _Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Rebuilt(nn.Module):
    """An ONNX :class:`~nonuniform.ir.graph_model.GraphModel` as standard torch layers run in the
    graph's order (both tools read the same module)."""

    def __init__(self, graph) -> None:
        super().__init__()
        self.layers, self.inputs = nn.ModuleList(), []
        for op in graph.ops:
            self.layers.append(_layer(op))
            self.inputs.append(list(op.inputs))

    def forward(self, x: Tensor) -> Tensor:
        vals = {-1: x}
        for i, (layer, ins) in enumerate(zip(self.layers, self.inputs)):
            vals[i] = layer(*(vals[k] for k in ins))
        return vals[len(self.layers) - 1]


def _layer(op) -> nn.Module:
    f32 = lambda t: nn.Parameter(t.detach().float().clone(), requires_grad=False)  # noqa: E731
    if isinstance(op, ConvOp):
        w = op.weight
        m = nn.Conv2d(w.shape[1] * op.groups, w.shape[0], tuple(w.shape[-2:]), op.stride, op.padding,
                      op.dilation, op.groups, bias=op.bias is not None)  # fmt: skip
        m.weight = f32(w)
        if op.bias is not None:
            m.bias = f32(op.bias)
        return m
    if isinstance(op, LinearOp):
        m = nn.Linear(op.weight.shape[1], op.weight.shape[0], bias=op.bias is not None)
        m.weight = f32(op.weight)
        if op.bias is not None:
            m.bias = f32(op.bias)
        return m
    if isinstance(op, ReshapeOp):
        return _Reshape(op.shape)
    if isinstance(op, AddOp) and op.weights == (1.0, 1.0):
        return _Add()
    if isinstance(op, Activation) and isinstance(op.relaxation, PiecewiseLinear):
        slope = op.relaxation.negative_slope
        return nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    if isinstance(op, Activation) and isinstance(op.relaxation, MaxPool2d):
        r = op.relaxation
        return nn.MaxPool2d(r.kernel, r.stride, r.padding)
    raise SystemExit(f"bench_reference: no torch layer for op {op.name} ({op.kind})")


def cases(only: str | None = None) -> list[tuple]:
    """(name, module, centres (B, *shape), eps, domain (lo, hi) or None, the Normalize the boxes
    go through); ``only``: just the case of that name (the others are not loaded)."""
    x, _ = load_samples("mnist")
    out = []
    for name in ("mnist-mlp", "mnist-cnn-small"):
        if only and only != f"{name} (embedded)":
            continue
        model = load_model(name)[0]
        assert isinstance(model[0], Normalize)
        # The leading Normalize is applied to the boxes instead (exact: per-channel affine): with it
        # inside the module auto_LiRPA's CROWN bound of mnist-cnn-small moves by up to 0.14 either
        # way (ours does not move; both stay sound), so the tools would not bound the same maths.
        norm = model[0]
        out.append((f"{name} (embedded)", model[1:], x[:32], 0.02, (0.0, 1.0), norm))
    maxpool = SHARED / "verivital" / "Convnet_maxpool.onnx"
    if maxpool.exists() and only in (None, "verivital Convnet_maxpool"):
        out.append(
            (
                "verivital Convnet_maxpool",
                Rebuilt(load_model(str(maxpool))[0]),
                x[32:64],
                0.02,
                (0.0, 1.0),
                None,
            )
        )
    for folder, onnx, glob, n, eps in (
        ("oval21", "cifar_base_kw.onnx", "vnnlib/*.vnnlib", 16, 0.03),
        ("cifar10_resnet", "resnet_2b.onnx", "vnnlib_properties_pgd_filtered/*/*.vnnlib", 8, 0.03),
    ):
        path = SHARED / folder / onnx
        if not path.exists() or only not in (None, f"{folder} {onnx[:-5]}"):
            continue
        graph, card = load_model(str(path))
        props = [parse_vnnlib(p) for p in sorted((SHARED / folder).glob(glob))[:n]]
        xc = torch.tensor(np.stack([(p.lower + p.upper) / 2 for p in props]), dtype=torch.float32)
        xc = xc.repeat(-(-n // len(xc)), 1)[:n]  # oval21 has 5 properties: centres repeat, radii differ
        out.append(
            (f"{folder} {onnx[:-5]}", Rebuilt(graph), xc.reshape(-1, *card.input_shape), eps, None, None)
        )
        # check the rebuilt module against the ONNX graph's own forward
        with torch.no_grad():
            diff = (out[-1][1](out[-1][2]) - graph(out[-1][2])).abs().max().item()
        assert diff < 1e-4, (onnx, diff)
    return out


def boxes(xc: Tensor, eps: float, domain, norm: Normalize | None, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    r = eps * (0.5 + torch.rand(xc.shape, generator=gen))
    lo, hi = xc - r, xc + r
    if domain is not None:
        lo, hi = lo.clamp(*domain), hi.clamp(*domain)
    return (lo, hi) if norm is None else (norm(lo), norm(hi))


class Ours:
    name = "nonuniform"

    def __init__(self, model, shape) -> None:
        self.bm = BoundedModel(model, shape)

    def bound(self, lo, hi, spec, method: str, grad: bool) -> Tensor:
        lo, hi = lo.clone().requires_grad_(grad), hi.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad or method == "alpha-crown"):
            lb, _ = self.bm.bounds(lo, hi, spec, method, bound_upper=False, alpha_steps=20, alpha_lr=0.1)
            if grad:
                lb.sum().backward()
        return lb.detach()


class Theirs:
    name = "auto_LiRPA"

    def __init__(self, model, shape) -> None:
        from auto_LiRPA import BoundedModule

        self.mod = BoundedModule(model, torch.zeros(1, *shape), device="cpu", verbose=0)
        self.mod.set_bound_opts({"optimize_bound_args": {"iteration": 20, "lr_alpha": 0.1}, "verbosity": 0})

    def bound(self, lo, hi, spec, method: str, grad: bool) -> Tensor:
        from auto_LiRPA import BoundedTensor
        from auto_LiRPA.perturbations import PerturbationLpNorm

        lo, hi = lo.clone().requires_grad_(grad), hi.clone().requires_grad_(grad)
        x = BoundedTensor(((lo + hi) / 2).detach(), PerturbationLpNorm(norm=np.inf, x_L=lo, x_U=hi))
        m = {"crown": "CROWN", "alpha-crown": "CROWN-Optimized"}[method]
        with torch.set_grad_enabled(grad or method == "alpha-crown"):
            lb, _ = self.mod.compute_bounds(x=(x,), C=spec, method=m, bound_upper=False)
            if grad:
                lb.sum().backward()
        return lb.detach()


def timed(fn, *args) -> tuple[float, Tensor]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def check_sound(model, lo, hi, spec, lbs: list[Tensor], n: int = 256) -> bool:
    """No sampled point or corner of any box beats any tool's lower bound."""
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(n, *lo.shape, generator=gen)
    u[: n // 4] = u[: n // 4].round()
    x = lo + (hi - lo) * u
    with torch.no_grad():
        logits = model(x.reshape(-1, *lo.shape[1:])).reshape(n, lo.shape[0], -1)
    margins = torch.einsum("bsk,nbk->nbs", spec, logits).min(0).values
    return all(bool((margins >= lb - 1e-5).all()) for lb in lbs)


def time_tools(tools, lo, hi, spec, repeats: int, alpha_repeats: int) -> tuple[dict, dict]:
    """Each tool's CROWN bound without and with the gradient ``repeats`` times and alpha-CROWN in
    the first ``alpha_repeats`` rounds, the tools interleaved: (times {(tool, kind): [s]}, lower
    bounds {(tool, kind): Tensor})."""
    times: dict = {(t.name, k): [] for t in tools for k in ("crown", "grad", "alpha")}
    lbs: dict = {}
    for tool in tools:  # warm-up: first-call set-up (caches, allocator) is not timed
        tool.bound(lo, hi, spec, "crown", True)
    for rep in range(max(repeats, alpha_repeats)):
        for tool in tools:
            if rep < repeats:
                s, lbs[tool.name, "crown"] = timed(tool.bound, lo, hi, spec, "crown", False)
                times[tool.name, "crown"].append(s)
                times[tool.name, "grad"].append(timed(tool.bound, lo, hi, spec, "crown", True)[0])
            if rep < alpha_repeats:
                s, lbs[tool.name, "alpha"] = timed(tool.bound, lo, hi, spec, "alpha-crown", False)
                times[tool.name, "alpha"].append(s)
    return times, lbs


def _setup(name: str | None, allocator: str):
    """This process's policy (one thread; the CLI's allocator policy when asked) and the cases."""
    torch.set_num_threads(1)
    applied = False
    if allocator == "cli":  # the CLI's policy, for whichever tools run in this process
        from nonuniform import configure_allocator

        applied = configure_allocator()
    return applied, cases(name)


def _prepared(case) -> tuple:
    name, model, xc, eps, domain, norm = case
    model = model.eval()
    lo, hi = boxes(xc, eps, domain, norm)
    with torch.no_grad():
        spec = margin_spec(model((lo + hi) / 2).argmax(1), 10)
    return model, tuple(xc.shape[1:]), lo, hi, spec


def _worker(args) -> None:
    """One tool on one case in this process; the results as one JSON line on stdout."""
    _, found = _setup(args.case, args.allocator)
    model, shape, lo, hi, spec = _prepared(found[0])
    tool = (Ours if args.worker == Ours.name else Theirs)(model, shape)
    times, lbs = time_tools([tool], lo, hi, spec, args.repeats, args.alpha_repeats)
    out = {
        "times": {k: v for (_, k), v in times.items()},
        "lbs": {k: v.tolist() for (_, k), v in lbs.items()},
    }
    print(json.dumps(out))


def _per_tool(args, name: str) -> tuple[dict, dict]:
    """:func:`time_tools`'s results with each tool in processes of its own, ``args.blocks`` per
    tool launched alternately (A B B A ...), then one more per tool for alpha-CROWN (its large
    blocks would move the allocator's thresholds for the CROWN runs after it)."""
    times: dict = {(t, k): [] for t in (Ours.name, Theirs.name) for k in ("crown", "grad", "alpha")}
    lbs: dict = {}
    per_block = -(-args.repeats // args.blocks)
    runs = [(block, per_block, 0) for block in range(args.blocks)]
    runs += [(0, 0, args.alpha_repeats)] if args.alpha_repeats > 0 else []
    for block, repeats, alpha_repeats in runs:
        order = (Ours.name, Theirs.name) if block % 2 == 0 else (Theirs.name, Ours.name)
        for tool in order:
            cmd = [sys.executable, __file__, "--worker", tool, "--case", name, "--allocator", args.allocator]
            cmd += ["--repeats", str(repeats), "--alpha-repeats", str(alpha_repeats)]
            cmd += ["--reference", args.reference]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"bench_reference: the {tool} worker failed on {name}:\n{done.stderr}")
            got = json.loads(done.stdout.strip().splitlines()[-1])
            for kind, v in got["times"].items():
                times[tool, kind] += v
            lbs.update({(tool, kind): torch.tensor(v) for kind, v in got["lbs"].items()})
    return times, lbs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", default=os.environ.get("NONUNIFORM_REFERENCE", ""))
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--alpha-repeats", type=int, default=1, help="0: CROWN only")
    ap.add_argument("--allocator", choices=("cli", "default"), default="default")
    ap.add_argument("--blocks", type=int, default=2, help="processes per tool and row")
    ap.add_argument("--one-process", action="store_true", help="both tools in this process")
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        sys.path.append(args.reference)
    try:
        import auto_LiRPA
    except ImportError:
        print(
            "bench_reference: auto_LiRPA is not importable (build it privately; see this script's docstring)"
        )
        return
    if args.worker:
        return _worker(args)
    allocator, found = _setup(None, args.allocator)
    rows = []
    for case in found:
        name, xc = case[0], case[2]
        if args.only and not any(o in name for o in args.only):
            continue
        model, shape, lo, hi, spec = _prepared(case)
        if args.one_process:
            tools = [Ours(model, shape), Theirs(model, shape)]
            times, lbs = time_tools(tools, lo, hi, spec, args.repeats, args.alpha_repeats)
        else:
            times, lbs = _per_tool(args, name)
        med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
        ours, theirs = (lbs["nonuniform", "crown"], lbs["auto_LiRPA", "crown"])
        diff = (ours - theirs).abs().max().item()
        tools_ = ("nonuniform", "auto_LiRPA")
        if args.alpha_repeats > 0:
            gain = {t: (lbs[t, "alpha"] - lbs[t, "crown"]).mean().item() for t in tools_}
            alpha_diff = (lbs["nonuniform", "alpha"] - lbs["auto_LiRPA", "alpha"]).mean().item()
        else:
            gain, alpha_diff = {t: float("nan") for t in tools_}, float("nan")
        sound = check_sound(model, lo, hi, spec, list(lbs.values()))
        row = (
            f"| {name} ({len(xc)}) | {_t(med['nonuniform', 'crown'])} / {_t(med['auto_LiRPA', 'crown'])} "
            f"({med['auto_LiRPA', 'crown'] / med['nonuniform', 'crown']:.1f}x) "
            f"| {_t(med['nonuniform', 'grad'])} / {_t(med['auto_LiRPA', 'grad'])} "
            f"({med['auto_LiRPA', 'grad'] / med['nonuniform', 'grad']:.1f}x) | {diff:.1e} "
            + (
                f"| {_t(med['nonuniform', 'alpha'])} / {_t(med['auto_LiRPA', 'alpha'])} "
                f"({med['auto_LiRPA', 'alpha'] / med['nonuniform', 'alpha']:.1f}x) "
                f"| {gain['nonuniform']:+.3f} / {gain['auto_LiRPA']:+.3f} | {alpha_diff:+.3f} "
                if args.alpha_repeats > 0
                else "| not run | - | - "
            )
            + f"| {'yes' if sound else '**NO**'} |"
        )
        print(row, flush=True)
        rows.append(row)
    runs = args.repeats if args.one_process else -(-args.repeats // args.blocks) * args.blocks
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()
    lines = [
        f"# nonuniform vs auto_LiRPA {auto_LiRPA.__version__} ({date.today()}, commit {commit})",
        "",
        "Reproduce (alone on the machine): `.venv/bin/python experiments/bench_reference.py --reference "
        "REF_SITE_PACKAGES` (see the script's docstring for building the reference privately).",
        f"CPU, one torch thread per tool, torch {torch.__version__}, "
        f"{ALLOC if allocator else 'default allocator'}; medians of {runs} runs "
        f"({PROCESSES if args.one_process else PER_TOOL.format(args.blocks)}; alpha-CROWN: "
        f"{args.alpha_repeats}); load average at the end {load[0]:.2f} / {load[1]:.2f} "
        "(1 / 5 min). Boxes: per-feature radii eps x (0.5 + U[0, 1]) around 32 MNIST test images "
        "(eps 0.02, clipped to [0, 1], then normalised: the embedded models' Normalize is applied to the "
        "boxes, see `cases()`) or the VNN-LIB properties' centres (eps 0.03 in the networks' normalised "
        "input units; oval21's 5 centres repeat with other radii); margin lower bounds "
        "against the predicted class. `diff` = largest |CROWN ours - CROWN theirs| (max-pooling differs "
        "by design: ours is tighter); gains and `alpha ours - theirs` are means over all margins; "
        "`sound` = 256 sampled "
        "points and corners per box never beat any bound of either tool.",
        "",
        "| model (batch) | CROWN s ours / theirs | with gradient | diff | alpha-CROWN 20 steps | "
        "alpha gain over CROWN ours / theirs | alpha ours - theirs | sound |",
        "|---|---|---|---:|---|---|---:|---|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


ALLOC = "the CLI's allocator policy (nonuniform.configure_allocator) for both"
PROCESSES = "the two tools interleaved in one process"
PER_TOOL = "each tool in {} processes of its own per row, launched alternately"


def _t(s: float) -> str:
    if s != s:  # not run (nan)
        return "-"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


if __name__ == "__main__":
    main()
