"""Step-DPO (Lai et al. 2024): preferences over single reasoning steps after a shared prefix.

For a wrong trace, find its first wrong step; the pair's prompt is the task prompt plus the
steps before it (which were right), `rejected` is that wrong step, and `chosen` is the next step
of one of the model's own *right* traces that shares the same prefix (in-distribution, as the
paper prefers self-generated corrections). The loss is plain DPO on the step's tokens
(`dpo.dpo_loss`); only the framing differs: a step-level completion gets no newline, because the
solution continues after it.

The first wrong step comes from the Evaluator's step-level judgements when the round has them
(the first score below 0.5), otherwise from the family's own step check (`check_step`, a true
statement about the task, e.g. a column sum of the operands). Steps use the shared compact
format (`reasoner/format.py`: `step;step#answer`).
"""

from __future__ import annotations

import random

from reasonloop.reasoner.format import STEP_SEP
from reasonloop.tasks.base import Family
from reasonloop.types import Judgement, PreferencePair, Task, Trace


def first_wrong_step(
    family: Family, task: Task, trace: Trace, step_scores: list[float] | None
) -> int | None:
    """Index of the trace's first wrong step, or None when no step is found wrong or the steps
    cannot be checked."""
    if step_scores is not None:
        for i, score in enumerate(step_scores[: len(trace.steps)]):
            if score < 0.5:
                return i
        return None
    check = getattr(family, "check_step", None)
    if check is None:
        return None
    for i, step in enumerate(trace.steps):
        ok = check(task, step)
        if ok is None:
            return None
        if not ok:
            return i
    return None


def step_pairs(
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    family: Family,
    rnd: int,
    per_task: int,
    rng: random.Random,
) -> list[PreferencePair]:
    """Step-level (right step, first wrong step) pairs after a shared prefix, at most `per_task`
    per task; each (prefix, wrong step) is used once."""
    verdict = {j.trace_id: j.verdict for j in judgements if j.level == "outcome"}
    step_scores = {j.trace_id: j.scores for j in judgements if j.level == "step"}
    by_task: dict[str, list[Trace]] = {}
    for t in traces:
        if t.task_id in tasks and verdict.get(t.id) is not None and not t.decoding.get("hint"):
            by_task.setdefault(t.task_id, []).append(t)
    pairs: list[PreferencePair] = []
    for task_id in sorted(by_task):
        task = tasks[task_id]
        right = [t for t in by_task[task_id] if verdict[t.id]]
        wrong = [t for t in by_task[task_id] if not verdict[t.id]]
        rng.shuffle(wrong)
        seen: set[tuple[tuple[str, ...], str]] = set()
        made = 0
        for bad in wrong:
            if made == per_task:
                break
            i = first_wrong_step(family, task, bad, step_scores.get(bad.id))
            if i is None:
                continue
            prefix = tuple(bad.steps[:i])
            key = (prefix, bad.steps[i])
            if key in seen:
                continue
            good = [
                t.steps[i]
                for t in right
                if len(t.steps) > i and tuple(t.steps[:i]) == prefix and t.steps[i] != bad.steps[i]
            ]
            if not good:
                continue
            seen.add(key)
            made += 1
            pairs.append(
                PreferencePair(
                    prompt=task.prompt + "".join(s + STEP_SEP for s in prefix),
                    chosen=rng.choice(sorted(set(good))),
                    rejected=bad.steps[i],
                    level="step",
                    task_id=task_id,
                    round=rnd,
                )
            )
    return pairs
