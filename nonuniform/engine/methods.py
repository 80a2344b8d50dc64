"""The bound methods, as one validated type."""

from __future__ import annotations

from enum import Enum


class Method(str, Enum):
    """A bound method. Settings and results store its plain string value (JSON- and key-safe):
    ``ibp`` (intervals), ``fastlin`` (parallel lines), ``crown`` (adaptive lower slopes),
    ``alpha-crown`` (optimised slopes)."""

    IBP = "ibp"
    FASTLIN = "fastlin"
    CROWN = "crown"
    ALPHA_CROWN = "alpha-crown"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, value: str | Method) -> Method:
        """The method named ``value``; a ValueError that lists the choices otherwise."""
        try:
            return cls(str(value))
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown bound method '{value}'; choose one of {names}") from None


METHODS = tuple(m.value for m in Method)

__all__ = ["METHODS", "Method"]
