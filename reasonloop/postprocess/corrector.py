"""A trained corrector: behaviour cloning on (wrong trace, corrected trace) pairs, and on
(right trace, the same trace) pairs.

From a round where a task has both a trace judged wrong and one judged right, the correction
prompt with the wrong attempt (`correction_format.build`) becomes the prompt and the right trace
the completion: the model learns to turn a wrong attempt into a right one (as in Welleck et
al. 2023's self-corrector, with the round's own right traces as the corrections). The examples
are trained with `train_sft`, mixed into the Reasoner's own training set.

Keep examples. Held out, the corrector is asked `?` (no feedback) about right attempts as much
as about wrong ones. Trained on fixes alone, it learns that `|?|` means "change the answer" and
breaks right attempts (the `corrector` preset without keeps: 14% of right held-out answers
broken after the seed, 29% after four rounds; with half keeps, 3-7%). So a share `keep_share`
of the no-feedback examples is a right attempt -> the same trace, taken from the same tasks as
the fixes, so that what tells a fix from a keep is the attempt, not the task. Keep examples are
made with `?` only: a `x` (judged wrong) attempt is never right.

Our choice: one model. The corrector is the policy itself, not a separate copy: the correction
prompt starts with the task prompt, so correcting shares everything the Reasoner knows about
the task, the loop keeps one checkpoint and one set of generation replicas, and the corrector
is always as good a solver as the Reasoner it corrects (a frozen or separately trained copy
would lag behind as the Reasoner improves).

Each pair gives an example with no feedback (`?`, intrinsic correction, what the held-out
`correction` metric measures) and, when the Evaluator's feedback is on (`outcome` or `step`),
a second one with that feedback (what Self-Refine shows at inference), so both prompts are in
the corrector's distribution. `trace_id` is the right trace's id (the completion's source);
the attempt is the one in the prompt.

`seed_examples` makes correction examples for the supervised seed (round 0), which has only
right reference traces: the wrong attempt is the reference trace with one answer digit changed
(an injected error), and a keep example is the reference trace as its own attempt, so the model
can follow a correction prompt from round 1 on.
"""

from __future__ import annotations

import random

from reasonloop.evaluator.step_corruption import change_digit
from reasonloop.postprocess import correction_format as cf
from reasonloop.tasks.base import Family
from reasonloop.types import Judgement, SFTExample, Task, Trace


def keeps_for(fixes: int, keep_share: float) -> int:
    """How many keep examples go with `fixes` no-feedback fix examples so that keeps are
    `keep_share` of both (rounded to the nearest whole example)."""
    if not 0.0 <= keep_share < 1.0:
        raise ValueError(f"postprocess.correct.keep_share must be in [0, 1), got {keep_share}")
    return round(fixes * keep_share / (1.0 - keep_share))


def keep_example(task: Task, trace: Trace, rnd: int) -> SFTExample | None:
    """`<task><trace>|?|` -> the trace itself; None when the trace would not survive
    `clean_attempt` unchanged (several lines, the mark, too long), since then the prompt's
    attempt and the completion would differ."""
    if cf.clean_attempt(trace.text) != trace.text:
        return None
    prompt = cf.build(task.prompt, trace.text, cf.NO_FEEDBACK)
    return SFTExample(prompt, trace.text, task.id, trace.id, rnd)


def corrector_examples(
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    family: Family,
    rnd: int,
    per_task: int,
    feedback: cf.FeedbackKind,
    keep_share: float,
) -> list[SFTExample]:
    """Correction examples for every task with a wrong and a right trace: at most `per_task`
    wrong traces per task (in trace order), each paired with the task's right traces in turn,
    then keep examples of the same task's right traces (in turn) until keeps are `keep_share`
    of the no-feedback examples so far. Hinted traces (STaR) answer another prompt and are left
    out; so are wrong traces whose text is identical to a right one's (nothing to correct)."""
    if per_task < 1:
        raise ValueError(f"postprocess.correct.pairs_per_task must be >= 1, got {per_task}")
    verdict = {j.trace_id: bool(j.verdict) for j in judgements if j.level == "outcome"}
    step_scores = {j.trace_id: j.scores for j in judgements if j.level == "step"}
    by_task: dict[str, list[Trace]] = {}
    for t in traces:
        if t.task_id in tasks and t.id in verdict and not t.decoding.get("hint"):
            by_task.setdefault(t.task_id, []).append(t)
    out: list[SFTExample] = []
    fixes = keeps = 0
    for task_id in sorted(by_task):
        task = tasks[task_id]
        right = [t for t in by_task[task_id] if verdict[t.id]]
        right_texts = {t.text for t in right}
        wrong = [t for t in by_task[task_id] if not verdict[t.id] and t.text not in right_texts]
        if not right or not wrong or cf.MARK in task.prompt:
            continue
        for i, bad in enumerate(wrong[:per_task]):
            good = right[i % len(right)]
            fbs = [cf.NO_FEEDBACK]
            if feedback != "none":
                fbs.append(cf.feedback_for(feedback, family, task, bad, step_scores.get(bad.id)))
            for fb in fbs:
                out.append(
                    SFTExample(
                        prompt=cf.build(task.prompt, bad.text, fb),
                        completion=good.text,
                        task_id=task_id,
                        trace_id=good.id,
                        round=rnd,
                    )
                )
            fixes += 1
        # A running target, so fractional shares come out right over the whole round.
        keepable = [k for k in (keep_example(task, t, rnd) for t in right) if k is not None]
        while keepable and keeps < keeps_for(fixes, keep_share):
            out.append(keepable[keeps % len(keepable)])
            keeps += 1
    return out


def corrupt_answer(family: Family, trace: Trace, rng: random.Random) -> str | None:
    """The trace's text with one digit of its final answer replaced by another digit (drawn from
    `rng`); None when the answer has no digit."""
    if trace.answer is None:
        return None
    bad = change_digit(trace.answer, rng)
    return None if bad is None else family.render(trace.steps, bad)


def seed_examples(
    tasks: dict[str, Task],
    traces: list[Trace],
    family: Family,
    n: int,
    feedback: cf.FeedbackKind,
    rng: random.Random,
    keep_share: float,
    rnd: int = 0,
) -> list[SFTExample]:
    """`n` correction examples from reference traces (drawn with `rng`, cycling when there are
    fewer): `round(n * keep_share)` keep examples (the reference as its own attempt -> the
    reference, no feedback) and the rest fixes, an injected wrong answer -> the reference trace,
    without feedback and, when feedback is on, with `x` too (an injected answer error has no
    first wrong step to point at)."""
    if not 0.0 <= keep_share < 1.0:
        raise ValueError(f"postprocess.correct.keep_share must be in [0, 1), got {keep_share}")
    usable = [t for t in traces if t.task_id in tasks and cf.MARK not in tasks[t.task_id].prompt]
    if not usable or n <= 0:
        return []
    order = [usable[i % len(usable)] for i in range(n)]
    rng.shuffle(order)
    n_keep = round(n * keep_share)
    out: list[SFTExample] = []
    for i, good in enumerate(order):
        task = tasks[good.task_id]
        if i < n_keep:
            keep = keep_example(task, good, rnd)
            if keep is not None:
                out.append(keep)
            continue
        bad = corrupt_answer(family, good, rng)
        if bad is None:
            continue
        fbs = [cf.NO_FEEDBACK] if feedback == "none" else [cf.NO_FEEDBACK, cf.WRONG]
        out += [
            SFTExample(cf.build(task.prompt, bad, fb), good.text, good.task_id, good.id, rnd)
            for fb in fbs
        ]
    return out
