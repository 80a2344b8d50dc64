"""VNN-LIB properties: parse the robustness form of VNN-COMP and decide it.

A property declares inputs ``X_i`` and outputs ``Y_j``, bounds every input by constants (a box)
and asserts an *unsafe* output region. The network is safe (``unsat``: no input of the box
reaches the region) or not (``sat``, with a counterexample). The output region is read into
disjunctive normal form: a list of conjunctions of atoms ``c . Y >= d``; several output asserts
are conjoined (their DNFs multiplied out).

Deciding (:func:`decide`): a conjunction is impossible on the box when one of its atoms is, i.e.
when a lower bound of ``-c . Y`` exceeds ``-d``; the property is ``unsat`` when every conjunction
is impossible (CROWN first, then alpha-CROWN while time remains). Otherwise a falsifier looks for
a point of the box satisfying some conjunction; it is reported (``sat``) only after a forward
pass confirms it. Everything else is ``unknown`` (or ``timeout``).

Shapes: the box is flat ``(n_inputs,)`` and reshaped to the model's input shape; atoms are
``(n_outputs,)`` coefficient vectors.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks.pgd import pgd_minimize
from ..engine.bounds import BoundedModel


class VnnlibError(ValueError):
    """A VNN-LIB file outside the supported form (named in the message)."""


@dataclass
class Property:
    lower: np.ndarray  # (n_inputs,)
    upper: np.ndarray
    disjuncts: list[list[tuple[np.ndarray, float]]]  # OR of AND of atoms c . Y >= d
    n_outputs: int


@dataclass
class Result:
    status: str  # unsat | sat | unknown | timeout
    seconds: float
    counterexample: np.ndarray | None = None  # flat input
    outputs: np.ndarray | None = None
    details: dict = field(default_factory=dict)

    def vnncomp_text(self) -> str:
        """The VNN-COMP result format: the status, then for sat the assignment of X and Y."""
        if self.status != "sat":
            return self.status + "\n"
        rows = [f"(X_{i} {v!r})" for i, v in enumerate(self.counterexample.tolist())]
        rows += [f"(Y_{j} {v!r})" for j, v in enumerate(self.outputs.tolist())]
        return "sat\n(" + "\n ".join(rows) + ")\n"


# -- parsing ------------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    text = re.sub(r";[^\n]*", " ", text)
    return text.replace("(", " ( ").replace(")", " ) ").split()


def _sexprs(tokens: list[str]) -> list:
    stack: list[list] = [[]]
    for t in tokens:
        if t == "(":
            stack.append([])
        elif t == ")":
            if len(stack) == 1:
                raise VnnlibError("unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(t)
    if len(stack) != 1:
        raise VnnlibError("unbalanced '('")
    return stack[0]


def parse_vnnlib(path: str | Path) -> Property:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VnnlibError(f"{path}: not a readable VNN-LIB text file ({type(e).__name__})") from None
    try:
        exprs = _sexprs(_tokens(text))
    except VnnlibError as e:
        raise VnnlibError(f"{path}: {e}") from None
    xs, ys = set(), set()
    for e in exprs:
        if isinstance(e, list) and e and e[0] == "declare-const":
            (xs if e[1].startswith("X_") else ys).add(int(e[1][2:]))
    if not xs or not ys:
        raise VnnlibError(f"{path}: declares no X_i or no Y_j variables")
    n_in, n_out = max(xs) + 1, max(ys) + 1
    lower, upper = np.full(n_in, -np.inf), np.full(n_in, np.inf)
    output_dnfs: list[list[list[tuple[np.ndarray, float]]]] = []
    for e in exprs:
        if not (isinstance(e, list) and e and e[0] == "assert"):
            continue
        body = e[1]
        if _is_input_bound(body):
            name, value, is_upper = _input_bound(body)
            i = int(name[2:])
            if is_upper:
                upper[i] = min(upper[i], value)
            else:
                lower[i] = max(lower[i], value)
        else:
            output_dnfs.append(_dnf(body, n_out, path))
    missing = np.nonzero(~np.isfinite(lower) | ~np.isfinite(upper))[0]
    if len(missing):
        raise VnnlibError(f"{path}: input X_{missing[0]} has no lower or upper bound ({len(missing)} such)")
    if (lower > upper).any():
        raise VnnlibError(f"{path}: empty input box (X_{int(np.argmax(lower > upper))})")
    if not output_dnfs:
        raise VnnlibError(f"{path}: no output constraint")
    disjuncts = [[]]
    for dnf in output_dnfs:
        disjuncts = [a + b for a in disjuncts for b in dnf]
    return Property(lower, upper, disjuncts, n_out)


def _is_input_bound(e) -> bool:
    return (
        isinstance(e, list)
        and len(e) == 3
        and e[0] in ("<=", ">=")
        and any(isinstance(t, str) and t.startswith("X_") for t in e[1:])
    )


def _input_bound(e) -> tuple[str, float, bool]:
    op, a, b = e
    if isinstance(a, str) and a.startswith("X_"):
        return a, float(b), op == "<="
    return b, float(a), op == ">="


def _term(t, n_out: int, path) -> tuple[np.ndarray, float]:
    c = np.zeros(n_out)
    if isinstance(t, str) and t.startswith("Y_"):
        c[int(t[2:])] = 1.0
        return c, 0.0
    try:
        return c, float(t)
    except (TypeError, ValueError):
        raise VnnlibError(f"{path}: unsupported output term {t!r}") from None


def _dnf(e, n_out: int, path) -> list[list[tuple[np.ndarray, float]]]:
    if not isinstance(e, list) or not e:
        raise VnnlibError(f"{path}: unsupported output constraint {e!r}")
    if e[0] == "or":
        return [conj for sub in e[1:] for conj in _dnf(sub, n_out, path)]
    if e[0] == "and":
        out = [[]]
        for sub in e[1:]:
            out = [a + b for a in out for b in _dnf(sub, n_out, path)]
        return out
    if e[0] in ("<=", ">=") and len(e) == 3:
        (ca, ka), (cb, kb) = _term(e[1], n_out, path), _term(e[2], n_out, path)
        # a <= b  <=>  (b - a) >= 0 ; a >= b  <=>  (a - b) >= 0 ; constants move to d.
        c, k = (cb - ca, kb - ka) if e[0] == "<=" else (ca - cb, ka - kb)
        return [[(c, -k)]]
    raise VnnlibError(f"{path}: unsupported output constraint starting with {e[0]!r}")


# -- deciding -----------------------------------------------------------------------------------


def _atoms(prop: Property) -> tuple[Tensor, Tensor, list[list[int]]]:
    rows, ds, groups = [], [], []
    for conj in prop.disjuncts:
        groups.append(list(range(len(rows), len(rows) + len(conj))))
        for c, d in conj:
            rows.append(c)
            ds.append(d)
    return torch.tensor(np.array(rows)), torch.tensor(ds), groups


def decide(
    model: nn.Module,
    prop: Property,
    input_shape: tuple[int, ...],
    timeout: float = 60.0,
    attack_restarts: int = 5,
    seed: int = 0,
    bab: bool = True,
) -> Result:
    """Decide ``prop`` for ``model`` within ``timeout`` seconds (see the module docstring);
    ``bab``: conjunctions that neither bounds nor attacks settle go to branch-and-bound."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    n_in = int(np.prod(input_shape))
    if prop.lower.size != n_in:
        raise VnnlibError(f"the property has {prop.lower.size} inputs, the model takes {n_in} {input_shape}")
    lo = torch.tensor(prop.lower, dtype=torch.float64).reshape(1, *input_shape)
    hi = torch.tensor(prop.upper, dtype=torch.float64).reshape(1, *input_shape)
    rows, ds, groups = _atoms(prop)
    bm = BoundedModel(model, tuple(input_shape), torch.float64)
    if bm.num_classes != prop.n_outputs:
        raise VnnlibError(f"the property has {prop.n_outputs} outputs, the model {bm.num_classes}")
    details: dict = {}

    def satisfied(y: Tensor) -> Tensor:
        """(n, groups) bool: which conjunctions hold at outputs y (n, outputs)."""
        vals = y @ rows.T.to(y.dtype) - ds.to(y.dtype)
        return torch.stack([(vals[:, g] >= 0).all(1) for g in groups], 1)

    def counterexample(x: Tensor) -> Result | None:
        x = torch.maximum(torch.minimum(x.double(), hi), lo)
        with torch.no_grad():
            y64 = bm.net.forward(x)
            y32 = model(x.float())
        hit = satisfied(y64)[0] & satisfied(y32.double())[0]
        if hit.any():
            return Result(
                "sat", time.perf_counter() - t0, x.flatten().numpy(), y32[0].double().numpy(), details
            )
        return None

    found = counterexample((lo + hi) / 2)
    if found:
        return found
    # -- proof: every conjunction needs one atom whose lower bound of -c . Y exceeds -d
    refuted = torch.zeros(len(groups), dtype=torch.bool)
    for method in ("crown", "alpha-crown"):
        if time.perf_counter() - t0 > timeout:
            return Result("timeout", time.perf_counter() - t0, details=details)
        with torch.no_grad():
            lb, _ = bm.bounds(lo, hi, (-rows)[None], method, bound_upper=False)
        atom_ok = lb[0] > -ds
        refuted |= torch.tensor([bool(atom_ok[g].any()) for g in groups])
        details[method] = int(refuted.sum())
        if refuted.all():
            return Result("unsat", time.perf_counter() - t0, details=details)
    # -- falsification: minimise max over atoms of (d - c . Y), every open conjunction at once
    open_groups = [g for g, r in zip(groups, refuted.tolist()) if not r]
    width = max(len(g) for g in open_groups)
    idx = torch.tensor([g + [g[0]] * (width - len(g)) for g in open_groups])  # pad by repeating
    r, d = rows[idx].float(), ds[idx].float()  # (G, A, outputs), (G, A)

    def objective(x: Tensor) -> Tensor:
        return (d - torch.einsum("gk,gak->ga", model(x), r)).max(1).values

    n = len(open_groups)
    for restart in range(attack_restarts):
        if time.perf_counter() - t0 > timeout:
            return Result("timeout", time.perf_counter() - t0, details=details)
        x, v = pgd_minimize(
            objective,
            lo.float().expand(n, *input_shape),
            hi.float().expand(n, *input_shape),
            steps=100,
            restarts=1 if restart == 0 else 2,
            seed=seed + restart,
        )
        for k in torch.argsort(v).tolist():
            found = counterexample(x[k : k + 1])
            if found:
                found.details["attack_restart"] = restart
                return found
    # -- branch-and-bound on what is left: one atom per open conjunction, the most promising first
    if bab and hasattr(bm.net, "ops"):
        from ..proof.bab import bab_prove, split_ops

        if split_ops(bm):
            left = list(zip(open_groups, [lb[0][g] + ds[g] for g in open_groups]))
            for g, gap in left:
                proved = False
                for a in [g[i] for i in torch.argsort(gap, descending=True).tolist()]:
                    remaining = timeout - (time.perf_counter() - t0)
                    if remaining <= 0:
                        return Result("timeout", time.perf_counter() - t0, details=details)
                    share = remaining / (len(left) * len(g))
                    res = bab_prove(bm, lo, hi, (-rows[a])[None, None], -float(ds[a]) + 1e-9, share)
                    if res.proved[0]:
                        proved = True
                        break
                if not proved:
                    return Result("unknown", time.perf_counter() - t0, details=details)
            details["bab"] = len(left)
            return Result("unsat", time.perf_counter() - t0, details=details)
    return Result("unknown", time.perf_counter() - t0, details=details)


__all__ = ["Property", "Result", "VnnlibError", "decide", "parse_vnnlib"]
