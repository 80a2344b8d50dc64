"""The portfolio's turns: a search whose open volume stops shrinking gets short turns, one that
moves again gets full ones, and short or skipped turns decide nothing."""

from __future__ import annotations

import time

import pytest

from nonuniform.proof import portfolio
from nonuniform.proof.portfolio import STALLED_WEIGHT, Portfolio


class _Fake:
    """A search that sleeps through its turns; ``shrink`` scales its open volume per turn."""

    def __init__(self, shrink: float) -> None:
        self.shrink, self.open_volume = shrink, 1.0
        self.proved = self.exhausted = False
        self.turns: list[float] = []

    def run(self, deadline: float):
        start = time.perf_counter()
        time.sleep(max(deadline - start, 0.0))
        self.turns.append(time.perf_counter() - start)
        self.open_volume *= self.shrink
        return None


@pytest.fixture
def quick_turns(monkeypatch):
    monkeypatch.setattr(portfolio, "MIN_TURN", 0.01)


def test_a_stalled_search_gets_short_turns_until_it_moves(quick_turns):
    moving, stalled = _Fake(0.5), _Fake(1.0)
    both = Portfolio([moving, stalled])
    both.run(time.perf_counter() + 0.2)  # equal turns first
    assert both.weights == [1.0, STALLED_WEIGHT]
    both.run(time.perf_counter() + 0.4)
    share = stalled.turns[-1] / (moving.turns[-1] + stalled.turns[-1])
    assert share == pytest.approx(STALLED_WEIGHT / (1 + STALLED_WEIGHT), abs=0.05)
    stalled.shrink = 0.9  # it moves again: full turns
    both.run(time.perf_counter() + 2.0)
    assert both.weights == [1.0, 1.0]


def test_short_or_skipped_turns_leave_the_weights_alone(quick_turns):
    moving, stalled = _Fake(0.5), _Fake(1.0)
    both = Portfolio([moving, stalled])
    both.run(time.perf_counter() + 0.01)  # turns shorter than MIN_TURN
    assert both.weights == [1.0, 1.0]
    both.weights = [1.0, STALLED_WEIGHT]
    turns, run = len(stalled.turns), moving.run
    moving.run = lambda deadline: run(deadline + 0.1)  # overruns the whole slice
    both.run(time.perf_counter() + 0.05)
    assert both.weights == [1.0, STALLED_WEIGHT] and len(stalled.turns) == turns
