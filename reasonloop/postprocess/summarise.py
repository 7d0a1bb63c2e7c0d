"""Summarise a trace: drop redundant or unverified steps, keep the verified core.

The design (DESIGN.md, Post-Processor) asks for summarising traces before they become training
data. For the compact step formats of the tiny testbed the honest version is small, and is
defined exactly here. Given a trace judged right at outcome level and a verdict per step
(True: right, False: wrong, None: cannot be checked):

- a step that repeats an earlier kept step character for character is dropped (`repeated`):
  it adds no information;
- a step judged wrong is dropped (`judged wrong`): the final answer is right without it, so the
  answer did not depend on what it claims, and training on it would teach a false statement;
- every other step is kept, in order, and so is the final answer.

Traces judged wrong are not summarised: what their answer depends on is unknown, and their
wrong steps are what correction (`self_refine.py`, `corrector.py`) is for. Step verdicts come
from step-level Judgements (score >= 0.5 is right) when the round has them, else from the
family's `check_step`.

A summary is a new Trace with `parent` = the original's id and decoding
`{"postprocess": "summarise", "dropped": [[index, reason], ...]}`, so its lineage is on record.
"""

from __future__ import annotations

from reasonloop.tasks.base import Family
from reasonloop.types import Task, Trace, stable_id

REPEATED = "repeated"
JUDGED_WRONG = "judged wrong"


def summarise_steps(
    steps: list[str], verdicts: list[bool | None]
) -> tuple[list[str], list[tuple[int, str]]]:
    """(kept steps, [(index, reason) of each dropped step]). `verdicts` align with `steps`;
    missing verdicts count as None (unchecked), extra ones are ignored."""
    kept: list[str] = []
    dropped: list[tuple[int, str]] = []
    seen: set[str] = set()
    for i, step in enumerate(steps):
        verdict = verdicts[i] if i < len(verdicts) else None
        if verdict is False:
            dropped.append((i, JUDGED_WRONG))
        elif step in seen:
            dropped.append((i, REPEATED))
        else:
            kept.append(step)
            seen.add(step)
    return kept, dropped


def step_verdicts(
    family: Family, task: Task, trace: Trace, step_scores: list[float] | None
) -> list[bool | None]:
    """A verdict per step: from step-level scores when given, else the family's `check_step`
    (None everywhere when the family cannot check steps)."""
    if step_scores is not None:
        return [s >= 0.5 for s in step_scores[: len(trace.steps)]]
    check = getattr(family, "check_step", None)
    if check is None:
        return [None] * len(trace.steps)
    return [check(task, s) for s in trace.steps]


def summarise_trace(
    family: Family,
    task: Task,
    trace: Trace,
    judged_right: bool,
    step_scores: list[float] | None,
    rnd: int,
) -> Trace | None:
    """The summary of a trace judged right, or None when it is judged wrong, has no answer, or
    nothing would be dropped (the trace is its own summary)."""
    if not judged_right or trace.answer is None:
        return None
    kept, dropped = summarise_steps(trace.steps, step_verdicts(family, task, trace, step_scores))
    if not dropped:
        return None
    text = family.render(kept, trace.answer)
    return Trace(
        id=stable_id(trace.id, "summarise"),
        task_id=trace.task_id,
        text=text,
        steps=kept,
        answer=trace.answer,
        producer=trace.producer,
        decoding={"postprocess": "summarise", "dropped": [list(d) for d in dropped]},
        parent=trace.id,
        round=rnd,
        n_tokens=0,
    )
