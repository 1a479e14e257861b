"""Choosing between candidates on the validation split within a time budget: successive halving.

Time is handed out in rounds (rungs). In each, every surviving candidate trains for the same
share of what is left (rung budgets double as the field halves: with three candidates, 1/7 of
the search time each, then 2/7 each for the two that go on), and after it at most half of them
(rounded up) go on: the leader, and those that could still catch it. A trailing candidate
survives only if the validation accuracy it gained during the rung exceeds its gap to the leader,
so a slow starter that is climbing fast (a from-scratch network in its first epochs) is not
dropped for being behind, and one that has stalled is. A candidate that is done (its search or
training complete) cannot gain any more. The winner is the best on validation; ties go to the
cheaper candidate (the one listed first).

``survivors`` and ``winner`` are pure functions of the standings, so the rule can be tested on
real measured scores; ``successive_halving`` runs the rounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from imgclf.pipeline.candidates import Candidate


@dataclass(frozen=True)
class Standing:
    """A candidate after a rung: its best validation accuracy and what it gained in the rung."""

    name: str
    score: float | None
    gain: float
    done: bool

    @property
    def reach(self) -> float:
        """Where it could be after one more rung at the same pace (where it is, if done)."""
        if self.score is None:
            return -math.inf
        return self.score + (0.0 if self.done else max(self.gain, 0.0))


def winner(standings: Sequence[Standing]) -> str:
    """The best validation accuracy; the first listed (the cheaper) on a tie.

    Raises:
        ValueError: no candidate has a score.
    """
    scored = [s for s in standings if s.score is not None]
    if not scored:
        raise ValueError("no candidate finished any training")
    best = max(s.score for s in scored)
    return next(s.name for s in scored if s.score == best)


def survivors(standings: Sequence[Standing], keep: int) -> list[str]:
    """The candidates that go on to the next rung, leader first.

    Args:
        standings: every candidate still in the race, cheapest first.
        keep: the most that go on (half the field, rounded up).

    Returns:
        The leader, then (best reach first) up to ``keep - 1`` others whose reach is above the
        leader's score (at the leader's score they could only tie, and ties go to the leader).
    """
    leader = winner(standings)
    target = next(s.score for s in standings if s.name == leader)
    assert target is not None
    order = {s.name: i for i, s in enumerate(standings)}
    chasers = [s for s in standings if s.name != leader and s.reach > target]
    chasers.sort(key=lambda s: (-s.reach, order[s.name]))
    return [leader, *(s.name for s in chasers[: keep - 1])]


def rung_weight(alive: int) -> int:
    """The search time still to come, in units of this rung's budget per candidate.

    Each rung halves the field (rounded up) and doubles the budget: 3 candidates -> 3 + 2*2 = 7.
    """
    weight, field, budget = 0, alive, 1
    while field > 1 or weight == 0:
        weight += field * budget
        field, budget = math.ceil(field / 2), budget * 2
    return weight


@dataclass
class Record:
    """What happened to one candidate, for ``metrics.json``."""

    val_accuracy: float | None = None
    seconds: float = 0.0
    done: bool = False
    status: str = "running"


def successive_halving(
    candidates: Sequence[Candidate],
    deadline: float | None,
    search_share: float,
    start_score: float,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Candidate, dict[str, Any]]:
    """Prepares the candidates, runs the rounds and returns the winner with what happened.

    Args:
        candidates: the field, cheapest first (``prepare`` has not been called).
        deadline: when the run's budget ends (``clock`` time); None: no limit, every candidate
            trains until it is done.
        search_share: the share of the time left after ``prepare`` that choosing may use (the
            winner's final fit may use the rest).
        start_score: what a candidate scores before training (chance), against which the first
            rung's gain is measured (a candidate's own ``start_score``, when it has one, wins).
        clock: the time source.

    Returns:
        ``(winner, {"winner", "search_seconds", "rungs", "candidates"})``.
    """
    started = clock()
    records = {c.name: Record() for c in candidates}

    def timed(candidate: Candidate, work: Callable[[], None]) -> None:
        began = clock()
        work()
        records[candidate.name].seconds += clock() - began

    for candidate in candidates:
        timed(candidate, candidate.prepare)
    search_deadline = None if deadline is None else clock() + (deadline - clock()) * search_share
    alive = list(candidates)
    before: dict[str, float | None] = {c.name: None for c in candidates}
    rungs: list[dict[str, Any]] = []
    while any(not c.done for c in alive):
        remaining = math.inf if search_deadline is None else search_deadline - clock()
        if remaining <= 0 and rungs:
            break
        # Done candidates need no more time: the rest is shared by those still training.
        budget = remaining / rung_weight(sum(not c.done for c in alive))
        for candidate in alive:
            if not candidate.done:
                limit = None if math.isinf(budget) else min(clock() + budget, search_deadline)
                timed(candidate, lambda c=candidate, d=limit: c.advance(d))
        standings = []
        for c in alive:
            start = before[c.name]
            if start is None:
                start = start_score if c.start_score is None else c.start_score
            gain = round((c.score or 0.0) - start, 4)
            standings.append(Standing(c.name, c.score, gain, c.done))
            before[c.name] = c.score or 0.0
        going_on = survivors(standings, math.ceil(len(alive) / 2)) if len(alive) > 1 else []
        for c in alive:
            if going_on and c.name not in going_on:
                records[c.name].status = f"dropped after rung {len(rungs)}"
        rungs.append(
            {
                "budget_seconds": None if math.isinf(budget) else round(budget, 1),
                "standings": [asdict(s) for s in standings],
                "survivors": going_on or [c.name for c in alive],
            }
        )
        if going_on:
            alive = [c for c in alive if c.name in going_on]
    best = winner([Standing(c.name, c.score, 0.0, c.done) for c in alive])
    chosen = next(c for c in alive if c.name == best)
    for c in candidates:
        record = records[c.name]
        record.val_accuracy, record.done = c.score, c.done
        if c is chosen:
            record.status = "winner"
        elif record.status == "running":
            record.status = "lost at the end"
        record.seconds = round(record.seconds, 1)
    return chosen, {
        "winner": best,
        "search_seconds": round(clock() - started, 1),
        "rungs": rungs,
        "candidates": {name: asdict(r) for name, r in records.items()},
    }
