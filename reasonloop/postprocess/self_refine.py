"""Self-Refine (Madaan et al. 2023) at inference, with the Evaluator's feedback.

A trace judged wrong is shown back to the model in a correction prompt (the task, the attempt
and the feedback; `correction_format.py`), and the model writes a new attempt. While the
Evaluator judges the new attempt wrong, it is corrected again, up to `attempts` times. Our
choices: the feedback is the Evaluator's own (`x` at outcome level, the first wrong step's
index at step level, or none), not a critique the model writes itself, because the tiny model
cannot write critiques; and each correction prompt holds only the latest attempt, not the whole
history (Self-Refine keeps the history), so prompts stay short enough for a character model.

Each new attempt is a Trace whose `parent` is the trace it corrects and whose decoding records
`{"postprocess": <label>, "attempt": k}` (k = 1 for the first correction), so every chain of
corrections can be followed back to the sampled trace.

The same function makes SCoRe's second attempts (`algorithms/score.py`): one attempt, no
feedback, for every first attempt.
"""

from __future__ import annotations

from collections.abc import Callable

from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.models.rollouts import Rollouts, as_rollouts
from reasonloop.postprocess import correction_format as cf
from reasonloop.tasks.base import Family
from reasonloop.types import Judgement, Task, Trace, stable_id

Judge = Callable[[list[Trace]], list[Judgement]]
"""The round's Evaluator on new traces: one outcome Judgement per trace (step ones optional)."""


def refine(
    model: LanguageModel | Rollouts,
    family: Family,
    tasks: dict[str, Task],
    wrong: list[Trace],
    judge: Judge,
    attempts: int,
    feedback: cf.FeedbackKind,
    sampling: Sampling,
    batch_size: int,
    producer: str,
    rnd: int,
    step_scores: dict[str, list[float]] | None = None,
    label: str = "refine",
) -> tuple[list[Trace], list[Judgement]]:
    """Correct each trace of `wrong` up to `attempts` times while `judge` says wrong.

    Returns the new traces and their judgements, in order of attempt. `sampling.seed` is
    offset by the attempt number, so each pass draws afresh and a redone phase replays it."""
    if attempts < 0:
        raise ValueError(f"postprocess.correct.attempts must be >= 0, got {attempts}")
    gen = as_rollouts(model)
    scores = dict(step_scores or {})
    todo = [t for t in wrong if t.task_id in tasks]
    new_traces: list[Trace] = []
    new_judgements: list[Judgement] = []
    for k in range(1, attempts + 1):
        if not todo:
            break
        prompts = [
            cf.build(
                tasks[t.task_id].prompt,
                t.text,
                cf.feedback_for(feedback, family, tasks[t.task_id], t, scores.get(t.id)),
            )
            for t in todo
        ]
        seed = None if sampling.seed is None else sampling.seed + k
        s = Sampling(
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            seed=seed,
        )
        how = {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p}
        made = []
        for parent, comps in zip(todo, gen.generate(prompts, 1, s, batch_size), strict=True):
            c = comps[0]
            steps, answer = family.parse(c.text)
            made.append(
                Trace(
                    id=stable_id(parent.id, label, k),
                    task_id=parent.task_id,
                    text=c.text,
                    steps=steps,
                    answer=answer,
                    producer=producer,
                    decoding={**how, "postprocess": label, "attempt": k},
                    parent=parent.id,
                    round=rnd,
                    n_tokens=c.n_tokens,
                )
            )
        judged = judge(made)
        verdict = {j.trace_id: bool(j.verdict) for j in judged if j.level == "outcome"}
        scores |= {j.trace_id: j.scores for j in judged if j.level == "step"}
        new_traces += made
        new_judgements += judged
        todo = [t for t in made if not verdict.get(t.id, False)]
    return new_traces, new_judgements
