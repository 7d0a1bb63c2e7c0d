"""Training sets for behaviour cloning (STaR, RFT, ReST-EM, easy-to-hard): kept traces become
(prompt, completion) examples. The prompt is always the task's own prompt, never a hinted one:
a STaR rationale is learned as if the model had found it unaided."""

from __future__ import annotations

from reasonloop.reasoner.hint import hinted
from reasonloop.types import Decision, SFTExample, Task, Trace


def sft_examples(
    tasks: dict[str, Task], traces: list[Trace], decisions: list[Decision], rnd: int
) -> list[SFTExample]:
    kept = {d.trace_id for d in decisions if d.kept}
    return [
        SFTExample(tasks[t.task_id].prompt, t.text, task_id=t.task_id, trace_id=t.id, round=rnd)
        for t in traces
        if t.id in kept
    ]


def with_hinted_copies(
    examples: list[SFTExample], tasks: dict[str, Task], share: float
) -> list[SFTExample]:
    """Add hinted copies of a share of gold examples, so the seed model learns to use a hint
    (STaR's rationalisation needs a model that reads the answer it is shown)."""
    out = list(examples)
    step = max(1, round(1 / share)) if share > 0 else 0
    for i, ex in enumerate(examples):
        task = tasks.get(ex.task_id)
        if step and i % step == 0 and task is not None and task.answer is not None:
            out.append(
                SFTExample(
                    hinted(ex.prompt, task.answer), ex.completion, ex.task_id, ex.trace_id, ex.round
                )
            )
    return out


def balance_levels(
    examples: list[SFTExample], tasks: dict[str, Task], per_level: int
) -> list[SFTExample]:
    """Repeat the examples of levels that hold fewer than `per_level`, cyclically, so a level
    with few distinct tasks is not drowned by the others in the seed."""
    by_level: dict[int, list[SFTExample]] = {}
    for ex in examples:
        by_level.setdefault(tasks[ex.task_id].difficulty, []).append(ex)
    out = []
    for group in by_level.values():
        out += group
        out += [group[i % len(group)] for i in range(max(0, per_level - len(group)))]
    return out
