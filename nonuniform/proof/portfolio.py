"""Several input-splitting searches of one box in turns, each turn's length set by progress.

No split rule wins everywhere (measured on ACAS Xu, 2026-12-02): ``fsb`` proves in a few hundred
leaves what ``sb`` cannot in 50,000, and ``sb`` proves in 2 s what ``fsb`` cannot in 40. Each
search is sound alone, so the box is proved as soon as one of them is.

Equal turns cost the winner half of the time-out. On the near-ties that need all of it (ACAS Xu
4_2 prop 2) one rule stops making progress: ``fsb``'s open volume stayed at 0.34 of the box from
4 s to 66 s while its frontier grew to 13,000 leaves, and ``sb``'s kept shrinking (2026-12-03).
So a search whose open volume (:attr:`~nonuniform.proof.input_split.InputSplit.open_volume`)
shrank by less than :data:`STALL` in its last turn gets :data:`STALLED_WEIGHT` of a full turn
next; one that moves again gets full turns back. A search that is merely slow still gets its
turns, so the portfolio can be slower than its best member by at most ``1 / STALLED_WEIGHT``
instead of the number of members.
"""

from __future__ import annotations

import time

from torch import Tensor

from .input_split import InputSplit, SplitStats

#: A turn that took less than this share off a search's open volume counts as no progress.
STALL = 0.01
#: Only a turn at least this long (seconds) can show a stall: one fsb step bounds ~1,000 boxes,
#: and on ACAS Xu 4_7 prop 1 its first 0.5-s turn refuted nothing, its next 4 s took the open
#: volume from 0.33 to 0.02 (2026-12-03).
MIN_TURN = 2.0
#: Weight of a stalled search's next turn (a progressing one has weight 1).
STALLED_WEIGHT = 0.05


class Portfolio:
    """Input-splitting searches of one box run in turns (module docstring); the same interface as
    one :class:`~nonuniform.proof.input_split.InputSplit` for the scheduler."""

    def __init__(self, searches: list[InputSplit]) -> None:
        self.searches = searches
        self.weights = [1.0] * len(searches)

    @property
    def proved(self) -> bool:
        return any(s.proved for s in self.searches)

    @property
    def exhausted(self) -> bool:
        return all(s.exhausted for s in self.searches)

    @property
    def hints(self) -> Tensor:
        return min(self.searches, key=lambda s: s.best_hint).hints

    @property
    def stats(self) -> SplitStats:
        each = [s.stats for s in self.searches]
        return SplitStats(sum(t.leaves for t in each), sum(t.open for t in each), max(t.depth for t in each),
                          sum(t.scored for t in each), sum(t.lp for t in each),
                          sum(t.lp_refuted for t in each), sum(t.relu for t in each),
                          sum(t.relu_refuted for t in each))  # fmt: skip

    def run(self, deadline: float) -> Tensor | None:
        """Turns until ``deadline`` (shared by weight), the proof, or a candidate counterexample."""
        live = [k for k, s in enumerate(self.searches) if not s.exhausted]
        start = time.perf_counter()
        span = max(deadline - start, 0.0)
        total = sum(self.weights[k] for k in live) or 1.0
        end = start
        for k in live:
            search = self.searches[k]
            end += span * self.weights[k] / total
            turn = min(deadline, end)
            if turn <= time.perf_counter():  # the searches before overran this one's share
                continue
            before, began = search.open_volume, time.perf_counter()
            found = search.run(turn)
            if time.perf_counter() - began >= MIN_TURN:  # shorter turns say little (fsb steps are coarse)
                moved = search.open_volume < (1 - STALL) * before
                self.weights[k] = 1.0 if moved else STALLED_WEIGHT
            if found is not None or search.proved:
                return found
        return None


__all__ = ["MIN_TURN", "STALL", "STALLED_WEIGHT", "Portfolio"]
