"""Outcome-level judging against the gold answer, with the family's own verifier."""

from __future__ import annotations

from reasonloop.tasks.base import Family
from reasonloop.types import Judgement, Task, Trace

EVALUATOR_ID = "gold"


def judge_gold(
    family: Family, tasks: dict[str, Task], traces: list[Trace], rnd: int
) -> list[Judgement]:
    out = []
    for tr in traces:
        score = float(family.verify(tasks[tr.task_id], tr.answer))
        # Partial credit (reasoning-gym) is kept as the score; the verdict demands exactly 1.0.
        out.append(
            Judgement(tr.id, EVALUATOR_ID, "outcome", [score], verdict=score == 1.0, round=rnd)
        )
    return out
