"""The flat module paths of releases up to 0.1.0 (``nonuniform.bounds``, ``nonuniform.vnnlib``, ...).

Each old path is a light module registered under ``nonuniform.<old>`` that imports nothing until a
name is read from it; then it warns once (``DeprecationWarning``) and hands out the name from the
module that holds it now. Old paths that are now sub-packages (``attacks``, ``verify``,
``recurrent``, ``report``, ``runs``) keep working through the package's own exports. Removed in 0.3.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings

#: old module -> the modules that hold its public names now (searched in order)
MOVED: dict[str, tuple[str, ...]] = {
    "ops": ("ir.ops",),
    "graph_ops": ("ir.graph_ops",),
    "network": ("ir.network", "frontends.layers"),
    "graph_model": ("ir.graph_model",),
    "relaxations": ("relax.activations",),
    "pooling": ("relax.pooling",),
    "gates": ("relax.gates",),
    "bounds": ("engine.bounds",),
    "specs": ("engine.specs",),
    "interval": ("engine.interval",),
    "tighten": ("engine.tighten",),
    "patches": ("engine.patches",),
    "alpha_crown": ("engine.alpha",),
    "layer_ops": ("frontends.layers",),
    "fx_import": ("frontends.fx_trace",),
    "onnx_import": ("frontends.onnx_read",),
    "layers": ("modules",),
    "recurrent_graph": ("recurrent.graph",),
    "recurrent_alpha": ("recurrent.alpha",),
    "recurrent_cells": ("recurrent.cells",),
    "steps": ("recurrent.steps",),
    "problem": ("certify.problem", "certify.settings"),
    "optimiser": ("certify.optimiser",),
    "finalise": ("certify.finalise",),
    "boxes": ("certify.boxes", "certify.settings", "certify.result", "runtime.device"),
    "certified": ("certify.result",),
    "bab": ("proof.bab",),
    "exact": ("proof.milp",),
    "smoothed": ("attacks.smoothed",),
    "vnnlib": ("verify.vnnlib", "verify.decide"),
    "metrics": ("analysis.statistics",),
    "ranking": ("analysis.rank",),
    "explain": ("analysis.attribution",),
    "explanations": ("analysis.explain",),
    "distributed": ("runs.ray",),
    "demo": ("runs.demo",),
    "plots": ("report.plots",),
    "models": ("zoo.models",),
    "train": ("zoo.train",),
    "data": ("zoo.data",),
    "samples": ("zoo.samples",),
    "threads": ("runtime.threads",),
}


class MovedModule(types.ModuleType):
    """``nonuniform.<old>``: resolves names lazily from the modules that hold them now."""

    def __init__(self, old: str, targets: tuple[str, ...]) -> None:
        super().__init__(f"nonuniform.{old}", f"Moved to nonuniform.{targets[0]} (deprecated path).")
        self._targets = targets
        self._warned = False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.__name__} is deprecated; import from nonuniform.{self._targets[0]} "
                "(or the top-level nonuniform package) instead",
                DeprecationWarning,
                stacklevel=2,
            )
        for target in self._targets:
            module = importlib.import_module(f"nonuniform.{target}")
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


def register(package: types.ModuleType) -> None:
    """Register every old path under ``package`` (only ``nonuniform.*`` names are touched)."""
    for old, targets in MOVED.items():
        name = f"{package.__name__}.{old}"
        module = sys.modules.setdefault(name, MovedModule(old, targets))
        setattr(package, old, module)
