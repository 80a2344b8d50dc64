"""Attacks that look for counterexamples inside boxes: PGD, corners and PGD on a smoothed copy
of the network (``pgd``, ``smoothed``); always scored on the real network."""

from .pgd import Falsification, corner_minimize, falsify_boxes, margin_objective, pgd_minimize

__all__ = ["Falsification", "corner_minimize", "falsify_boxes", "margin_objective", "pgd_minimize"]
