"""VNN-LIB properties: parse the robustness and safety forms of VNN-COMP.

A property declares inputs ``X_i`` and outputs ``Y_j``, bounds the inputs by constants and asserts
an *unsafe* region. The network is safe (``unsat``: no input reaches the region) or not (``sat``,
with a counterexample). Every assert is read into disjunctive normal form over two kinds of atom:
input bounds ``X_i <= v`` / ``X_i >= v`` and linear output atoms ``c . Y >= d`` (terms built from
``Y_j``, constants, ``+``, ``-`` and ``*`` by a constant). The asserts are conjoined and multiplied
out; each disjunct is an input box (the plain input asserts intersected with the disjunct's own
bounds) and a conjunction of output atoms. Disjuncts with the same box form one
:class:`Region`; ACAS Xu property 6 (a disjunction of two input boxes) has two regions.

Shapes: boxes are flat ``(n_inputs,)`` and reshaped to the model's input later; atoms are
``(n_outputs,)`` coefficient vectors. Deciding a property: :mod:`~nonuniform.verify.decide`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: A property multiplies out to at most this many disjuncts (or it is refused, named).
MAX_DISJUNCTS = 100_000

Atom = tuple[np.ndarray, float]  # c . Y >= d


class VnnlibError(ValueError):
    """A VNN-LIB file outside the supported form (named in the message)."""


@dataclass
class Region:
    """One input box and the unsafe output region on it: OR of ANDs of atoms ``c . Y >= d``."""

    lower: np.ndarray  # (n_inputs,)
    upper: np.ndarray
    disjuncts: list[list[Atom]]


@dataclass
class Property:
    """A parsed property: the unsafe set is the union over regions of box x output region."""

    regions: list[Region]
    n_inputs: int
    n_outputs: int

    def _single(self) -> Region:
        if len(self.regions) != 1:
            raise VnnlibError(f"the property has {len(self.regions)} input boxes; this use takes one")
        return self.regions[0]

    @property
    def lower(self) -> np.ndarray:
        """The input box's lower ends (a property with one input box only)."""
        return self._single().lower

    @property
    def upper(self) -> np.ndarray:
        return self._single().upper

    @property
    def disjuncts(self) -> list[list[Atom]]:
        """The unsafe output region on the single input box."""
        return self._single().disjuncts


# -- reading s-expressions ------------------------------------------------------------------------


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


def _show(e) -> str:
    """An s-expression as text, shortened for an error line."""
    text = e if isinstance(e, str) else "(" + " ".join(_show(x) for x in e) + ")"
    return text if len(text) <= 60 else text[:57] + "..."


# -- terms and atoms ------------------------------------------------------------------------------


class _Parser:
    def __init__(self, path: Path, n_in: int, n_out: int) -> None:
        self.path, self.n_in, self.n_out = path, n_in, n_out

    def fail(self, what: str) -> VnnlibError:
        return VnnlibError(f"{self.path}: {what}")

    def linear(self, t) -> tuple[np.ndarray, np.ndarray, float]:
        """A term as (coefficients of X, coefficients of Y, constant)."""
        cx, cy = np.zeros(self.n_in), np.zeros(self.n_out)
        if isinstance(t, str):
            for prefix, c, n in (("X_", cx, self.n_in), ("Y_", cy, self.n_out)):
                if t.startswith(prefix) and t[2:].isdigit():
                    if int(t[2:]) >= n:
                        raise self.fail(f"{t} is used but not declared")
                    c[int(t[2:])] = 1.0
                    return cx, cy, 0.0
            try:
                return cx, cy, float(t)
            except ValueError:
                raise self.fail(f"unsupported term {t!r} (expected X_i, Y_j or a number)") from None
        if not t or not isinstance(t[0], str) or t[0] not in ("+", "-", "*"):
            raise self.fail(f"unsupported term {_show(t)} (linear terms use +, - and * by a number)")
        parts = [self.linear(a) for a in t[1:]]
        if not parts:
            raise self.fail(f"empty term {_show(t)}")
        if t[0] == "+":
            return sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
        if t[0] == "-":
            if len(parts) == 1:
                return -parts[0][0], -parts[0][1], -parts[0][2]
            head, rest = parts[0], parts[1:]
            return (head[0] - sum(p[0] for p in rest), head[1] - sum(p[1] for p in rest),
                    head[2] - sum(p[2] for p in rest))  # fmt: skip
        scale, varying = 1.0, None
        for p in parts:
            if p[0].any() or p[1].any():
                if varying is not None:
                    raise self.fail(f"a product of two variables in {_show(t)} is not linear")
                varying = p
            else:
                scale *= p[2]
        if varying is None:
            return cx, cy, scale
        return varying[0] * scale, varying[1] * scale, varying[2] * scale

    def dnf(self, e) -> list[list[tuple]]:
        """An assert's body as OR of AND of literals ('x', i, value, is_upper) or ('y', c, d)."""
        if not isinstance(e, list) or not e or not isinstance(e[0], str):
            raise self.fail(f"unsupported constraint {_show(e)}")
        if e[0] == "or":
            return [conj for sub in e[1:] for conj in self.dnf(sub)]
        if e[0] == "and":
            out: list[list[tuple]] = [[]]
            for sub in e[1:]:
                out = [a + b for a in out for b in self.dnf(sub)]
                if len(out) > MAX_DISJUNCTS:
                    raise self.fail(f"more than {MAX_DISJUNCTS} disjuncts after multiplying out")
            return out
        if e[0] in ("<=", ">=") and len(e) == 3:
            (xa, ya, ka), (xb, yb, kb) = self.linear(e[1]), self.linear(e[2])
            # a <= b  <=>  (b - a) >= 0 ; a >= b  <=>  (a - b) >= 0
            cx, cy, k = (xb - xa, yb - ya, kb - ka) if e[0] == "<=" else (xa - xb, ya - yb, ka - kb)
            if cx.any() and cy.any():
                raise self.fail(f"{_show(e)} mixes inputs and outputs (not supported)")
            if cx.any():
                nz = np.nonzero(cx)[0]
                if len(nz) > 1:
                    raise self.fail(f"{_show(e)}: constraints over several inputs are not supported")
                i, a = int(nz[0]), float(cx[nz[0]])
                # a X_i + k >= 0  <=>  X_i >= -k/a (a > 0) or X_i <= -k/a (a < 0)
                return [[("x", i, -k / a, a < 0)]]
            return [[("y", cy, -k)]]
        raise self.fail(f"unsupported constraint starting with {e[0]!r}")


def parse_vnnlib(path: str | Path) -> Property:
    """Read a VNN-LIB file into a :class:`Property` (see the module docstring for the form)."""
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
        if isinstance(e, list) and len(e) >= 2 and e[0] == "declare-const" and isinstance(e[1], str):
            name = e[1]
            if name[:2] in ("X_", "Y_") and name[2:].isdigit():
                (xs if name.startswith("X_") else ys).add(int(name[2:]))
    if not xs or not ys:
        raise VnnlibError(f"{path}: declares no X_i or no Y_j variables")
    n_in, n_out = max(xs) + 1, max(ys) + 1
    parser = _Parser(path, n_in, n_out)
    lower, upper = np.full(n_in, -np.inf), np.full(n_in, np.inf)
    base_atoms: list[Atom] = []
    choices: list[list[list[tuple]]] = []  # asserts with more than one disjunct
    for e in exprs:
        if not (isinstance(e, list) and e and e[0] == "assert"):
            continue
        if len(e) != 2:
            raise parser.fail(f"an assert takes one constraint: {_show(e)}")
        dnf = parser.dnf(e[1])
        if len(dnf) == 1:
            _apply(dnf[0], lower, upper, base_atoms)
        else:
            choices.append(dnf)
    disjuncts: list[list[tuple]] = [[]]
    for dnf in choices:
        disjuncts = [a + b for a in disjuncts for b in dnf]
        if len(disjuncts) > MAX_DISJUNCTS:
            raise parser.fail(f"more than {MAX_DISJUNCTS} disjuncts after multiplying out")
    if not base_atoms and not any(lit[0] == "y" for d in disjuncts for lit in d):
        raise VnnlibError(f"{path}: no output constraint")
    regions: dict[bytes, Region] = {}
    for d in disjuncts:
        lo, hi, atoms = lower.copy(), upper.copy(), list(base_atoms)
        _apply(d, lo, hi, atoms)
        missing = np.nonzero(~np.isfinite(lo) | ~np.isfinite(hi))[0]
        if len(missing):
            raise VnnlibError(
                f"{path}: input X_{missing[0]} has no lower or upper bound ({len(missing)} such)"
            )
        if (lo > hi).any():
            continue  # this disjunct's input box is empty: nothing can reach it
        key = lo.tobytes() + hi.tobytes()
        regions.setdefault(key, Region(lo, hi, [])).disjuncts.append(atoms)
    if not regions:
        first = int(np.argmax(lower > upper)) if (lower > upper).any() else 0
        raise VnnlibError(f"{path}: empty input box (X_{first})")
    return Property(list(regions.values()), n_in, n_out)


def _apply(literals: list[tuple], lower: np.ndarray, upper: np.ndarray, atoms: list[Atom]) -> None:
    """Intersect the box with a conjunction's input bounds; append its output atoms."""
    for lit in literals:
        if lit[0] == "x":
            _, i, value, is_upper = lit
            if is_upper:
                upper[i] = min(upper[i], value)
            else:
                lower[i] = max(lower[i], value)
        else:
            atoms.append((lit[1], float(lit[2])))


def __getattr__(name: str):
    """``decide``/``Result`` lived here until 2026-12-02: still handed out, with a warning (the
    import is by name at call time, so this module does not depend on the decider)."""
    if name in ("decide", "Result"):
        import importlib
        import warnings

        warnings.warn(
            f"nonuniform.verify.vnnlib.{name} moved to nonuniform.verify.decide", DeprecationWarning, 2
        )
        return getattr(importlib.import_module("nonuniform.verify.decide"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MAX_DISJUNCTS", "Property", "Region", "VnnlibError", "parse_vnnlib"]
