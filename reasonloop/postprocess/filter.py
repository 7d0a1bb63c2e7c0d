"""Keep or drop each judged trace, and say why. Only kept traces become training data."""

from __future__ import annotations

from collections import defaultdict

from reasonloop.config import PostProcessConfig
from reasonloop.tasks.base import Family
from reasonloop.types import Decision, Judgement, Task, Trace


def _bad_step(family: Family, task: Task, trace: Trace) -> bool:
    check = getattr(family, "check_step", None)
    if check is None:
        return False
    return any(check(task, s) is False for s in trace.steps)


def process(
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    cfg: PostProcessConfig,
    family: Family,
    rnd: int,
) -> list[Decision]:
    """One Decision per trace, in trace order. The first failing reason is recorded."""
    verdict = {j.trace_id: j.verdict for j in judgements if j.level == "outcome"}
    seen: dict[str, set[str]] = defaultdict(set)
    per_task: dict[str, int] = defaultdict(int)
    out = []
    for tr in traces:
        task = tasks[tr.task_id]
        if tr.answer is None:
            reason = "no answer"
        elif len(tr.text) > cfg.max_chars:
            reason = "too long"
        elif not verdict.get(tr.id):
            reason = "judged wrong"
        elif cfg.check_steps and not cfg.summarise and _bad_step(family, task, tr):
            reason = "bad step"
        elif cfg.dedup and tr.text in seen[tr.task_id]:
            reason = "duplicate"
        elif per_task[tr.task_id] >= (1 if cfg.keep == "first-correct" else cfg.max_per_task):
            reason = "over per-task cap"
        else:
            reason = "kept"
            seen[tr.task_id].add(tr.text)
            per_task[tr.task_id] += 1
        out.append(Decision(tr.id, reason == "kept", reason, round=rnd))
    return out
