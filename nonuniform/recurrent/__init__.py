"""Recurrent models (``SequenceClassifier`` around ``nn.RNN``/``LSTM``/``GRU``): ``graph`` (the unrolled
graph), ``engine`` (``RecurrentBoundedModel``: CROWN through time), ``cells`` (fused LSTM/GRU
backward steps), ``alpha`` (alpha-CROWN parameters), ``steps`` (per-step robustness)."""

from ..modules import SequenceClassifier
from .engine import Graph, RecurrentBoundedModel, RecurrentState

__all__ = ["Graph", "RecurrentBoundedModel", "RecurrentState", "SequenceClassifier"]
