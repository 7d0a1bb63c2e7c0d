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

This holds only for families whose steps stand alone (`Family.standalone_steps`: a chain sum's
running totals, a program's reductions, an equation's rewrites); where a step's place carries
meaning (addition's columns: `3+4+0=7` may rightly appear twice) nothing is summarised.

Traces judged wrong are not summarised: what their answer depends on is unknown, and their
wrong steps are what correction (`self_refine.py`, `corrector.py`) is for. Step verdicts come
from step-level Judgements (score >= 0.5 is right) when the round has them, else from the
family's `check_step`.

A summary is a new Trace with `parent` = the original's id and decoding
`{"postprocess": "summarise", "dropped": [[index, reason], ...]}`, so its lineage is on record.
"""

from __future__ import annotations

from dataclasses import replace

from reasonloop.tasks.base import Family
from reasonloop.types import Decision, Judgement, SFTExample, Task, Trace, stable_id

SUMMARIES_FILE = "summaries.parquet"
"""A round's summaries (`postprocess.summarise`), beside its traces."""
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
    """The summary of a trace judged right, or None when it is judged wrong, has no answer,
    nothing would be dropped (the trace is its own summary), or the family's steps do not stand
    alone (dropping one of addition's columns would make the trace say something else)."""
    if not judged_right or trace.answer is None or not family.standalone_steps:
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


def summarise_kept(
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    decisions: list[Decision],
    family: Family,
    rnd: int,
) -> list[Trace]:
    """The summaries of a round's kept traces (those with something to drop), in trace order."""
    kept = {d.trace_id for d in decisions if d.kept}
    verdict = {j.trace_id: bool(j.verdict) for j in judgements if j.level == "outcome"}
    step_scores = {j.trace_id: j.scores for j in judgements if j.level == "step"}
    out = []
    for t in traces:
        if t.id in kept and t.task_id in tasks:
            s = summarise_trace(
                family, tasks[t.task_id], t, verdict.get(t.id, False), step_scores.get(t.id), rnd
            )
            if s is not None:
                out.append(s)
    return out


def with_summaries(examples: list[SFTExample], summaries: list[Trace]) -> list[SFTExample]:
    """Training examples with each summarised trace's text replaced by its summary (and the
    example pointing at the summary, whose `parent` is the trace it came from)."""
    by_parent = {s.parent: s for s in summaries}
    return [
        replace(ex, completion=by_parent[ex.trace_id].text, trace_id=by_parent[ex.trace_id].id)
        if ex.trace_id in by_parent
        else ex
        for ex in examples
    ]
