"""Adaptive curriculum: the Task Creator picks the level the Reasoner learns most from.

A level whose measured success p is near 0 gives no correct traces to learn from, one near 1
teaches nothing new; the learnability p(1-p) (the variance of a pass/fail outcome, and the
share of groups with both a right and a wrong sample) peaks at p = 1/2. The Creator aims
at levels whose p lies in a target band, and explores upward once everything measured is
mastered. Pure functions of success tables, so the choice is testable by hand.

Only levels are chosen: a run has one task family (`tasks.family`), so there is no family to
pick between.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

SuccessTable = dict[int, tuple[int, int]]
"""level -> (successes, trials)."""


def learnability(p: float) -> float:
    return p * (1 - p)


def success_table(per_round: Iterable[Mapping[str | int, Sequence[int]]]) -> SuccessTable:
    """The latest measurement of each level over rounds given oldest first: a level the Reasoner
    was measured on recently says more about the current model than an old one.

    Keys may be strings (the manifest is JSON); entries with no trials are ignored.
    """
    table: SuccessTable = {}
    for info in per_round:
        for level, (ok, n) in info.items():
            if n > 0:
                table[int(level)] = (int(ok), int(n))
    return table


def choose_level(
    levels: Sequence[int],
    table: Mapping[int, tuple[int, int]],
    band: tuple[float, float],
    fallback: int,
) -> tuple[int, str]:
    """(level to draw at, why). `levels` are the allowed levels, easiest first.

    - Some measured level in the band: the one with the highest p(1-p) (ties: the harder).
    - Otherwise, if some level is mastered (p above the band): the next level above the
      hardest mastered one (the edge of competence; it stays there when at the top).
    - Otherwise (everything measured is too hard): one level below the easiest measured.
    - Nothing measured yet: `fallback` (the frontier rule's level).
    """
    lo, hi = band
    rates = {lv: ok / n for lv, (ok, n) in table.items() if lv in levels and n > 0}
    if not rates:
        return fallback, "no success measured yet: frontier level"
    in_band = [lv for lv, p in rates.items() if lo <= p <= hi]
    if in_band:
        # Rounded so that p and 1-p tie exactly despite floating point.
        best = max(in_band, key=lambda lv: (round(learnability(rates[lv]), 9), lv))
        return best, f"p={rates[best]:.2f} in band, highest p(1-p)"
    mastered = [lv for lv, p in rates.items() if p > hi]
    if mastered:
        top = max(mastered)
        harder = [lv for lv in levels if lv > top]
        if not harder:
            return top, f"all mastered up to the top level L{top}"
        return harder[0], f"L{top} mastered (p={rates[top]:.2f}): next level up"
    easiest = min(rates)
    easier = [lv for lv in levels if lv < easiest]
    down = easier[-1] if easier else easiest
    return down, f"L{easiest} too hard (p={rates[easiest]:.2f}): a level down"
