"""Deciding a VNN-LIB property within a time-out: one scheduler that spends the whole budget.

A :class:`~nonuniform.verify.vnnlib.Property` is a union of input regions, each with an unsafe
output region (OR of AND of atoms). The property is ``unsat`` when every region is refuted, and
``sat`` as soon as a point of some region reaches its unsafe outputs -- confirmed by a forward
pass of the real model in float32 *and* of the float64 network before it is reported.

The scheduler (:func:`decide`), per property:

1. the box centres and a few hundred random points (cheap falsification);
2. CROWN, then alpha-CROWN while it fits the budget, on every atom of every region: a case is
   refuted on a region when one of its atoms is;
3. rounds of growing length (1, 2, 4, ... s, the same whatever the time-out, so a run with a
   long time-out answers everything a short one does, at the same times), each giving every open
   region an attack slice (random sampling and projected Adam from the centre, random points and
   the points the branch-and-bound leaves suggest) and a branch-and-bound slice. The search is
   input splitting (:class:`~nonuniform.proof.input_split.InputSplit`) for inputs of at most
   :attr:`VerifierConfig.input_split_max` values, else ReLU splitting with beta-CROWN multipliers
   (:class:`~nonuniform.proof.bab.ReluSplit`); both keep their frontier between slices.

``timeout`` is answered only when time is up; ``unknown`` only when every open region's search is
exhausted (the reason is in ``details["reason"]``). Every search proves in float64 with a safety
margin (the final proof the package asks for).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks.falsify import adam_pgd, sample
from ..engine.bounds import BoundedModel
from ..engine.specs import OutputCases
from ..proof.bab import ReluSplit, split_ops
from ..proof.input_split import BRANCHINGS, MARGIN, InputSplit
from ..proof.leaf_relu import LeafReluSplit
from ..proof.lp_leaf import ReluChainLP
from ..proof.portfolio import Portfolio
from .vnnlib import Property, VnnlibError


@dataclass(frozen=True)
class VerifierConfig:
    """How :func:`decide` spends its time (the time-out itself is an argument of each call)."""

    bab: bool = True  # branch-and-bound after bounds and attacks (input or ReLU splitting)
    input_split_max: int = 32  # split the input box when it has at most this many values
    branching: str = "portfolio"  # input splitting: sb, fsb, widest, or portfolio (sb and fsb in turns)
    split_batch: int = 1024  # input-split leaves bounded together
    relu_batch: int = 64  # ReLU-split leaves bounded together
    lp_leaves: bool = False  # input splitting: certified LP on open leaves (ReLU chains; off: see NOTES)
    leaf_relu: bool = True  # sb input splitting: ReLU splitting inside deep leaves with few unstable ReLUs
    alpha: bool = True  # alpha-CROWN on what CROWN leaves open (when it fits the budget)
    attack_share: float = 0.25  # of every round, for the attacks (halved each round after attack_rounds)
    attack_rounds: int = 4  # full attack share for these rounds (~15 s), then it decays to a fifth
    first_round: float = 1.0  # seconds; rounds double
    seed: int = 0


@dataclass
class Result:
    """``status``: unsat | sat | unknown | timeout; a ``sat`` carries the checked counterexample
    (flat input) and the model's float32 outputs there."""

    status: str
    seconds: float
    counterexample: np.ndarray | None = None
    outputs: np.ndarray | None = None
    details: dict = field(default_factory=dict)

    def vnncomp_text(self) -> str:
        """The VNN-COMP result format: the status, then for sat the assignment of X and Y."""
        if self.status != "sat":
            return self.status + "\n"
        rows = [f"(X_{i} {v!r})" for i, v in enumerate(self.counterexample.tolist())]
        rows += [f"(Y_{j} {v!r})" for j, v in enumerate(self.outputs.tolist())]
        return "sat\n(" + "\n ".join(rows) + ")\n"


class _Region:
    """One input box of the property, its open cases and its search."""

    def __init__(self, region, shape: tuple[int, ...], n_out: int) -> None:
        self.lo = torch.tensor(region.lower, dtype=torch.float64).reshape(1, *shape)
        self.hi = torch.tensor(region.upper, dtype=torch.float64).reshape(1, *shape)
        # float32 ends rounded inwards: a float32 point between them lies in the box
        lo32, hi32 = self.lo.float(), self.hi.float()
        self.lo32 = torch.where(lo32.double() < self.lo, torch.nextafter(lo32, hi32 + 1), lo32)
        self.hi32 = torch.where(hi32.double() > self.hi, torch.nextafter(hi32, lo32 - 1), hi32)
        self.cases = OutputCases.from_disjuncts(region.disjuncts, n_out)
        self.open = list(range(self.cases.count))
        self.search: InputSplit | ReluSplit | None = None
        self.exhausted = ""  # why the search can do no more

    @property
    def open_cases(self) -> OutputCases:
        return self.cases.subset(self.open)


def decide(
    model: nn.Module,
    prop: Property,
    input_shape: tuple[int, ...],
    timeout: float = 60.0,
    config: VerifierConfig | None = None,
) -> Result:
    """Decide ``prop`` for ``model`` within ``timeout`` seconds (see the module docstring)."""
    cfg = config or VerifierConfig()
    t0 = time.perf_counter()
    deadline = t0 + timeout
    shape = tuple(input_shape)
    n_in = int(np.prod(shape))
    if prop.n_inputs != n_in:
        raise VnnlibError(f"the property has {prop.n_inputs} inputs, the model takes {n_in} {shape}")
    bm = BoundedModel(model, shape, torch.float64)
    if bm.num_classes != prop.n_outputs:
        raise VnnlibError(f"the property has {prop.n_outputs} outputs, the model {bm.num_classes}")
    model_dtype = next((p.dtype for p in model.parameters()), torch.float32)
    gen = torch.Generator().manual_seed(cfg.seed)
    regions = [_Region(r, shape, prop.n_outputs) for r in prop.regions]
    details: dict = {"regions": len(regions), "cases": sum(r.cases.count for r in regions)}

    def done(status: str, **extra) -> Result:
        return Result(status, time.perf_counter() - t0, details={**details, **extra})

    def confirm(region: _Region, x: Tensor) -> Result | None:
        """sat when some case holds at x (moved inside the box in float32) in both precisions."""
        x32 = torch.minimum(torch.maximum(x.detach().to(torch.float32), region.lo32), region.hi32)
        with torch.no_grad():
            y64 = bm.net.forward(x32.double())
            y = model(x32.to(model_dtype)).double()
        holds = (region.cases.violation(y64) <= 0) & (region.cases.violation(y) <= 0)
        if not bool(holds.any()):
            return None
        res = done("sat")
        res.counterexample, res.outputs = x32.double().flatten().numpy(), y[0].numpy()
        return res

    def forward(x: Tensor) -> Tensor:
        return model(x.to(model_dtype))

    def _sample(forward, region: _Region, cases, gen, rounds: int, small: bool, end_attack: float):
        """(best random point, a confirmed ``sat`` or None). On small inputs random points are
        cheap (2^16 in ~0.1 s on ACAS Xu): they get half of the attack slice, chunk by chunk."""
        if not small:
            return sample(forward, region.lo32, region.hi32, cases, 64, gen)[0], None
        start = time.perf_counter()
        end = start + (end_attack - start) / 2
        best_x, best_v = sample(
            forward, region.lo32, region.hi32, cases, min(1 << (10 + rounds), 1 << 16), gen
        )
        while time.perf_counter() < end:
            if best_v <= 0 and (found := confirm(region, best_x)) is not None:
                return best_x, found
            x, v = sample(forward, region.lo32, region.hi32, cases, 1 << 16, gen)
            if v < best_v:
                best_x, best_v = x, v
        return best_x, None

    # 1. centres and random points
    for region in regions:
        found = confirm(region, (region.lo + region.hi) / 2)
        found = found or confirm(region, sample(forward, region.lo32, region.hi32, region.cases, 256, gen)[0])
        if found:
            return found
    # 2. one-shot bounds
    for method in ("crown", "alpha-crown") if cfg.alpha else ("crown",):
        for region in regions:
            if not region.open:
                continue
            if time.perf_counter() > deadline:
                return done("timeout")
            if method == "alpha-crown" and (
                n_in <= cfg.input_split_max or not _alpha_fits(details, deadline)
            ):
                continue  # input splitting tightens far more than slopes on a few inputs
            t = time.perf_counter()
            _refute(bm, region, method)
            details[f"{method}_seconds"] = details.get(f"{method}_seconds", 0.0) + time.perf_counter() - t
        if f"{method}_seconds" in details:
            details[method] = sum(r.cases.count - len(r.open) for r in regions)
        if not any(r.open for r in regions):
            return done("unsat", method=method)
    # 3. attacks and branch-and-bound, interleaved in rounds of growing length
    for region in regions:
        region.search = _search(bm, region, cfg, n_in) if cfg.bab else None
        if region.search is None:
            region.exhausted = "branch-and-bound is off" if not cfg.bab else "no search applies to this model"
    details["method"] = _method_name(regions)
    slice_ = cfg.first_round
    rounds = 0
    while True:
        rounds += 1
        details["rounds"] = rounds
        for region in [r for r in regions if r.open]:
            now = time.perf_counter()
            if now >= deadline:
                return done("timeout", **_search_stats(regions))
            share = _attack_share(cfg, rounds)
            end_attack = min(deadline, now + slice_ * share * (1 if region.search else 4))
            cases = region.open_cases
            hints = getattr(region.search, "hints", None)
            x, found = _sample(forward, region, cases, gen, rounds, n_in <= cfg.input_split_max, end_attack)
            found = found or confirm(region, x)
            if found is None and time.perf_counter() < end_attack:
                # the best random point starts PGD too: on ACAS Xu 1_9 prop 7 the unsafe set is a
                # sliver that ~1 in 5 million uniform points hits (2026-12-03)
                hints = x if hints is None else torch.cat([x.to(hints.dtype), hints])
                x, _ = adam_pgd(forward, region.lo32, region.hi32, cases, gen, starts=8, steps=50 * rounds,
                                hints=hints, deadline=end_attack)  # fmt: skip
                found = confirm(region, x)
            if found is not None:
                found.details.update(_search_stats(regions), found_by="attack", rounds=rounds)
                return found
            if region.search is None or region.exhausted:
                continue
            point = region.search.run(min(deadline, time.perf_counter() + slice_ * (1 - share)))
            if point is not None and (found := confirm(region, point)) is not None:
                found.details.update(_search_stats(regions), found_by="branch-and-bound leaf", rounds=rounds)
                return found
            if region.search.proved:
                region.open = []
            elif region.search.exhausted:
                region.exhausted = _why_exhausted(region.search)
        if not any(r.open for r in regions):
            return done("unsat", **_search_stats(regions))
        if all(r.exhausted for r in regions if r.open) and rounds >= 2:
            reason = "; ".join(sorted({r.exhausted for r in regions if r.open}))
            return done("unknown", reason=reason, **_search_stats(regions))
        slice_ *= 2


def _refute(bm: BoundedModel, region: _Region, method: str) -> None:
    """Drop the cases of ``region`` that ``method`` refutes on the whole box."""
    cases = region.open_cases
    with torch.no_grad() if method == "crown" else torch.enable_grad():
        lb, _ = bm.bounds(region.lo, region.hi, (-cases.rows)[None], method, bound_upper=False)
    atom_ok = lb.detach()[0] > -cases.offsets + MARGIN
    refuted = atom_ok[cases.index].any(1)
    region.open = [k for k, r in zip(region.open, refuted.tolist()) if not r]


def _attack_share(cfg: VerifierConfig, rounds: int) -> float:
    """The attacks' share of round ``rounds``: ``attack_share`` for the first ``attack_rounds``,
    then halved every round down to a fifth of it. Every ACAS Xu counterexample was found within
    8.5 s (2026-12-02 run), while the near-ties that need the whole time-out are unsat: a fixed
    quarter gave 29 of 4_2 prop 2's 116 s to attacks."""
    late = max(rounds - cfg.attack_rounds, 0)
    return max(cfg.attack_share * 0.5**late, cfg.attack_share / 5)


def _alpha_fits(details: dict, deadline: float) -> bool:
    """alpha-CROWN (20 steps, ~60 CROWN passes) only when it would take under a third of what is left."""
    return 60 * details.get("crown_seconds", 0.0) < (deadline - time.perf_counter()) / 3


def _search(bm: BoundedModel, region: _Region, cfg: VerifierConfig, n_in: int):
    cases = region.open_cases
    if n_in <= cfg.input_split_max:
        rules = ("sb", "fsb") if cfg.branching == "portfolio" else (cfg.branching,)
        lp = _relu_chain_lp(bm) if cfg.lp_leaves else None
        shape = tuple(region.lo.shape[1:])

        def relu(rule: str):  # sb's only (its drill cap and hand-off were tuned together, NOTES)
            return LeafReluSplit(bm, cases, shape) if cfg.leaf_relu and rule == "sb" else None

        searches = [InputSplit(bm, region.lo, region.hi, cases, batch=cfg.split_batch if r != "fsb" else
                               cfg.split_batch // (2 * n_in), branching=r, lp=lp, relu=relu(r))
                    for r in rules]  # fmt: skip
        return searches[0] if len(searches) == 1 else Portfolio(searches)
    if not hasattr(bm.net, "ops") or not split_ops(bm):
        return None
    # one atom per open case (the closest to refuted): proving it on every leaf refutes the case
    with torch.no_grad():
        lb, _ = bm.bounds(region.lo, region.hi, (-cases.rows)[None], "crown", bound_upper=False)
    gap = (lb[0] + cases.offsets)[cases.index]
    atoms = cases.index.gather(1, gap.argmax(1, keepdim=True)).squeeze(1)
    spec = (-cases.rows[atoms])[None]
    return ReluSplit(bm, region.lo, region.hi, spec, -cases.offsets[atoms] + MARGIN, batch=cfg.relu_batch,
                     max_leaves=10**7)  # fmt: skip


def _relu_chain_lp(bm: BoundedModel) -> ReluChainLP | None:
    """The certified LP for input-split leaves, where the network is a ReLU chain."""
    try:
        return ReluChainLP(bm)
    except ValueError:
        return None


def _why_exhausted(search) -> str:
    if isinstance(search, ReluSplit):
        if search.stuck:
            return "ReLU splitting: a leaf with every ReLU split stays open (no proof this way)"
        return "ReLU splitting: leaf budget spent"
    return "input splitting: a leaf cannot be halved further in float64 or the leaf budget is spent"


def _method_name(regions: list[_Region]) -> str:
    kinds = {type(r.search).__name__ for r in regions if r.search is not None}
    return {
        "InputSplit": "input splitting",
        "Portfolio": "input splitting",
        "ReluSplit": "ReLU splitting",
    }.get(next(iter(kinds)) if len(kinds) == 1 else "", "none" if not kinds else "mixed")


def _search_stats(regions: list[_Region]) -> dict:
    leaves = sum(r.search.leaves if isinstance(r.search, ReluSplit) else r.search.stats.leaves
                 for r in regions if r.search is not None)  # fmt: skip
    split = [r.search.stats for r in regions if r.search is not None and not isinstance(r.search, ReluSplit)]
    handed = sum(s.relu for s in split)
    if not handed:
        return {"leaves": leaves}
    # leaf_relu: input leaves given to ReLU splitting, and how many of them it refuted
    return {"leaves": leaves, "relu_handed": handed, "relu_refuted": sum(s.relu_refuted for s in split)}


BRANCHINGS = (*BRANCHINGS, "portfolio")

__all__ = ["BRANCHINGS", "Result", "VerifierConfig", "decide"]
