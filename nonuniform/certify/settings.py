"""The settings of a certification: one typed object from the command line to the bound engine.

:class:`CertifyConfig` is what the CLI builds, what :func:`~nonuniform.runs.rundir.certify_run`,
the Ray workers and :func:`~nonuniform.certify.boxes.certify_boxes` take, and what every result
records. Each field is classified where it is declared: ``box`` fields can change a certified box
(they form the run's identity, so ``--resume`` refuses a run made with other values), ``run``
fields change only how the work is done (batching, device). A new field without a class fails
the tests, so the identity can no longer drift from the settings.

Validation happens once, in ``__post_init__``: the method name, the solver defaults that depend on
it, value ranges, the domain and which options go together.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from ..engine.methods import METHODS, Method
from .shapes import floor_fraction

#: The domain of a bare module when none is given: pixels in [0, 1].
UNIT_DOMAIN = (0.0, 1.0)

#: alpha-CROWN's parameter steps when not given (searches / final proof), see the fields' notes.
ALPHA_STEPS, ALPHA_STEPS_CHECK = 5, 50


def solver_defaults(method: str) -> dict[str, int]:
    """Warm-start balancing steps and augmented-Lagrangian iterations when none are given.

    Measured (docs/NOTES.md, "Solver defaults"; mean log half-width, s per image): from the shaped
    start, 8 balancing steps (:func:`~nonuniform.certify.optimiser.balance`) and no AL iterations
    beat the former 60 AL iterations on every model tried -- mnist-cnn-small -3.619 vs -3.633 at
    about half the time, cifar_base_kw -1.316 vs -1.353, mnist-mlp -3.893 vs -3.897 at a third --
    and 10-20 AL iterations after them add under 0.001. alpha-crown keeps 60 AL iterations and no
    balancing: its slopes are optimised jointly with the radii only inside the AL loop
    (mnist-mlp: -3.878 that way, -3.884 with balancing alone).
    """
    if method == Method.ALPHA_CROWN:
        return {"shape_steps": 0, "iterations": 60}
    return {"shape_steps": 8, "iterations": 0}


def box(default: Any) -> Any:
    """A setting that can change a certified box: part of the run's identity."""
    return field(default=default, metadata={"identity": True})


def run(default: Any) -> Any:
    """A setting that changes how the work is done, never a box (tested: batch independence)."""
    return field(default=default, metadata={"identity": False})


@dataclass
class CertifyConfig:
    """Settings of :func:`~nonuniform.certify.boxes.certify_boxes` (all recorded in the results)."""

    method: str = box("crown")  # ibp | fastlin | crown | alpha-crown (a Method or its value)
    asymmetric: bool = box(False)  # separate radii below and above each feature
    clip: bool = box(True)  # intersect boxes with the domain
    #: (lo, hi): floats, or nested lists / arrays shaped like one input for per-feature domains;
    #: None: the model card's (certify_run; a model that records none needs one), [0, 1] for a
    #: bare module (certify_boxes)
    domain: tuple | None = box(None)
    per_logit: bool = box(False)  # per-logit bounds (Liu et al.) instead of margins
    delta: float = box(1e-3)  # margin the optimiser must keep
    check_margin: float = box(1e-4)  # margin the final (float64) check must prove
    check_dtype: str = box("float64")
    # None: solver_defaults(method) (the AL iterations after the warm start's balancing steps).
    iterations: int | None = box(None)
    lr: float = box(0.05)
    mu_init: float = box(1.0)
    mu_growth: float = box(2.0)
    mu_max: float = box(1e4)
    update_every: int = box(10)
    tol: float = box(1e-3)  # max constraint violation for convergence
    ftol: float = box(1e-3)  # objective change (mean log-width) over one outer step for convergence
    uniform_rtol: float = box(1e-3)  # relative tolerance of the uniform-radius bisection
    shrink_steps: int = box(14)
    shaped_start: bool = box(True)  # warm start from the linearised problem (see shaped_start)
    shape_steps: int | None = box(None)  # balancing steps after the shaped start (optimiser.balance)
    polish: bool = box(True)  # scale the optimised shapes to their largest certified scale
    # Branch-and-bound growth (nonuniform.proof.bab.grow_boxes): each certified box is scaled up by
    # the largest factor BaB proves in float64 within `bab_time` seconds per sample. Boxes then
    # depend on the machine's speed (a time budget).
    bab: bool = box(False)
    bab_time: float = box(10.0)
    # alpha-CROWN slope steps per bound call (searches, and non-joint mode); None: ALPHA_STEPS
    alpha_steps: int | None = box(None)
    # ... and in the final check, from CROWN's slopes (50 steps reach what the joint optimiser's
    # slopes prove on mnist-mlp boxes; 20 fell short by up to 0.005 in the margin)
    alpha_steps_check: int | None = box(None)
    # alpha-CROWN: the optimiser carries one slope set per sample and updates it with the
    # log-radii in the same Adam loop (one bound pass per iteration), warm-started from CROWN's
    # slopes at the start box; False re-optimises slopes from CROWN's at every bound call.
    joint_slopes: bool | None = box(None)  # None: True
    # alpha-CROWN: the warm start is CROWN's whole default pipeline (shaped start and its balancing
    # steps), and CROWN's shape is one more candidate of the final scaling, so alpha-CROWN's box is
    # never smaller than CROWN's (without it cifar_base_kw lost 0.07 in mean log half-width to
    # CROWN on some images: the AL iterations alone do not reach what the balancing steps find).
    crown_start: bool = box(True)
    alpha_lr: float = box(0.1)
    # Box shapes (certify/shapes.py): one radius per group ("channel", "time", "patch:HxW" or an
    # integer map shaped like one input); frozen features (radius 0) and whole-domain features
    # (boolean masks shaped like one input); per-feature objective weights; radius floors: an
    # absolute `floor` and the objective's (apothem: the best uniform radius; blend:B a fraction B).
    groups: Any = box(None)
    frozen: Any = box(None)
    whole: Any = box(None)
    weights: Any = box(None)
    floor: float = box(0.0)
    objective: str = box("volume")
    # Certify an output range instead of the prediction (``ir/output_range.py``): (lower, upper),
    # each one number for every output or one per output; +-inf for an open end.
    output_range: Any = box(None)
    # Samples whose optimisation shares a seed; the optimiser itself draws no random numbers.
    seed: int = box(0)
    batch_size: int = run(25)  # samples optimised together (independent of each other)
    device: str | None = run(None)  # auto | cpu | cuda[:N]; None: where the inputs are

    def __post_init__(self) -> None:
        self.method = Method.parse(self.method).value
        alpha = self.method == Method.ALPHA_CROWN
        if not alpha:
            given = [
                name
                for name, value, default in (
                    ("alpha_steps", self.alpha_steps, ALPHA_STEPS),
                    ("alpha_steps_check", self.alpha_steps_check, ALPHA_STEPS_CHECK),
                    ("joint_slopes", self.joint_slopes, True),
                    ("crown_start", self.crown_start, True),
                )
                if value is not None and value != default
            ]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                names = ", ".join(f"`{g}`" for g in given)
                raise ValueError(f"{names} only {verb} to `method` alpha-crown, not {self.method}")
        if self.joint_slopes is None:
            self.joint_slopes = True
        if self.alpha_steps is None:
            self.alpha_steps = ALPHA_STEPS
        if self.alpha_steps_check is None:
            self.alpha_steps_check = ALPHA_STEPS_CHECK
        for key, value in solver_defaults(self.method).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        for name in ("iterations", "shape_steps", "alpha_steps", "alpha_steps_check", "shrink_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"`{name}` must be 0 or more, got {getattr(self, name)}")
        if int(self.batch_size) < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if not self.bab_time > 0:
            raise ValueError(f"`bab_time` must be a positive number of seconds, got {self.bab_time}")
        if self.check_dtype not in ("float64", "float32"):
            raise ValueError(f"`check_dtype` must be float64 or float32, got {self.check_dtype!r}")
        if self.bab and self.check_dtype != "float64":
            raise ValueError("`bab` proves its leaves in float64: keep `check_dtype` float64")
        if self.domain is not None:
            self.domain = normalise_domain(self.domain)
        if self.output_range is not None:
            self.output_range = _output_range(self.output_range)
            if self.per_logit:
                raise ValueError(
                    "`output_range` bounds the outputs' margins; it cannot be combined with `per_logit`"
                )
        floor_fraction(self.objective)  # validates
        if not (math.isfinite(float(self.floor)) and float(self.floor) >= 0):
            raise ValueError(f"`floor` must be a radius >= 0, got {self.floor}")
        self.floor = float(self.floor)
        if self.groups is not None and not isinstance(self.groups, str):
            self.groups = _as_list(self.groups, np.int64, "groups")
        for name, dtype in (("frozen", bool), ("whole", bool), ("weights", np.float64)):
            if getattr(self, name) is not None:
                setattr(self, name, _as_list(getattr(self, name), dtype, name))

    def for_output_range(self, model, example):
        """``model`` itself, or with the output-range head when ``output_range`` is set (an
        :class:`~nonuniform.ir.output_range.OutputRange` is kept as it is). ``example``: one batch
        of inputs, to count the outputs."""
        from ..ir.output_range import OutputRange

        if self.output_range is None or isinstance(model, OutputRange):
            return model
        with torch.no_grad():
            out = model(example[:1])
        if out.dim() != 2:
            raise ValueError(
                f"an output range needs outputs shaped (N, outputs); the model gives {tuple(out.shape)}"
            )
        return OutputRange(model, *self.output_range, outputs=out.shape[1])

    # -- what identifies a box, and the round trip through JSON -------------------------------
    def identity(self) -> dict[str, Any]:
        """The fields that can change a box, JSON-safe: a run's identity (``run.json``)."""
        d = self.to_dict()
        return {f.name: d[f.name] for f in fields(self) if f.metadata["identity"]}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-safe (what a saved file gives back)."""
        d = asdict(self)
        if self.domain is not None:
            d["domain"] = [np.asarray(v, dtype=np.float64).tolist() for v in self.domain]
        d["device"] = None if self.device is None else str(self.device)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CertifyConfig:
        """The inverse of :meth:`to_dict` (unknown keys are an error: a file from another version)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown certify settings: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def build(cls, config: CertifyConfig | None = None, **overrides: Any) -> CertifyConfig:
        """``config`` (or the defaults) with ``overrides`` applied, validated once.

        Unknown names are refused with the list of known ones (``**options`` used to pass them
        through silently). An override of the method resets the solver defaults that depend on
        it unless they are overridden too."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(
                f"unknown certify setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if config is None:
            return cls(**overrides)
        values = {f.name: getattr(config, f.name) for f in fields(cls)}
        if "method" in overrides and Method.parse(overrides["method"]).value != config.method:
            for key in (*solver_defaults(config.method), "alpha_steps", "alpha_steps_check"):
                values[key] = None
        values.update(overrides)
        return cls(**values)


def _output_range(value) -> list:
    """(lower, upper) with each end a number or a list of numbers (JSON-safe floats, inf kept)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"`output_range` must be (lower, upper); got {value!r}")
    ends = []
    for end in value:
        arr = np.asarray(end, dtype=np.float64)
        if arr.ndim > 1 or np.isnan(arr).any():
            raise ValueError(f"`output_range` ends must be numbers or lists of numbers; got {end!r}")
        ends.append(arr.tolist())
    return ends


def _as_list(values, dtype, name: str) -> list:
    """An array-like as nested lists of ``dtype`` (JSON-safe, so it is part of the identity)."""
    arr = np.asarray(getattr(values, "detach", lambda: values)())
    if dtype is bool and arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"`{name}` must be a boolean mask (0/1 values)")
    elif dtype is np.int64 and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integers (group ids), got {arr.dtype}")
    return arr.astype(dtype).tolist()


def normalise_domain(domain) -> tuple:
    """``(lo, hi)`` as floats or nested lists of floats; refuses NaN, reversed ends."""
    try:
        lo, hi = domain
    except (TypeError, ValueError):
        raise ValueError(f"domain must be a pair (lo, hi), got {domain!r}") from None
    lo_a, hi_a = (np.asarray(getattr(d, "detach", lambda d=d: d)(), dtype=np.float64) for d in (lo, hi))
    if not (np.isfinite(lo_a).all() and np.isfinite(hi_a).all()):
        raise ValueError("domain: every end must be a finite number (no NaN or inf)")
    if (lo_a > hi_a).any():
        raise ValueError(f"domain: lower end above upper end in {int((lo_a > hi_a).sum())} features")
    if lo_a.ndim or hi_a.ndim:
        return (lo_a.tolist(), hi_a.tolist())
    return (float(lo_a), float(hi_a))


__all__ = ["METHODS", "UNIT_DOMAIN", "CertifyConfig", "Method", "normalise_domain", "solver_defaults"]
