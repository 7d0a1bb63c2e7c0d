"""The correction prompt: a task, a previous attempt and the Evaluator's feedback, in a compact
character format the tiny model can learn.

    <task prompt><previous attempt>|<feedback>|

is followed by the second attempt in the ordinary step format (`step;step#answer`). Because the
task prompt comes first and the previous attempt follows it as the model wrote it, a correction
prompt is exactly a first attempt's sequence extended by `|feedback|`: one sequence holds
attempt-then-correct (what the SCoRe stage trains on, `algorithms/score.py`).

Feedback is one of:

- `?`: none (intrinsic self-correction, as in SCoRe: the model is not told whether it was right);
- `x`: judged wrong at outcome level;
- a step index `0`..`99`: the first wrong step (from step-level Judgements or the family's
  `check_step`), as in Self-Refine with a localised critique.

Every character used here (`|`, `?`, `x`, digits) is printable ASCII, in the tiny tokenizer's
vocabulary. The previous attempt is model output, hence untrusted: only its first line is used,
the mark `|` is removed from it (it would make the prompt ambiguous) and it is cut to
`MAX_ATTEMPT_CHARS`.
"""

from __future__ import annotations

from typing import Literal

from reasonloop.algorithms.step_dpo import first_wrong_step
from reasonloop.tasks.base import Family
from reasonloop.types import Task, Trace

MARK = "|"
NO_FEEDBACK = "?"
WRONG = "x"
MAX_ATTEMPT_CHARS = 256
MAX_STEP_INDEX = 99
"""Step indices above this are reported as plain `x` (two digits keep the prompt compact)."""

FeedbackKind = Literal["none", "outcome", "step"]


def clean_attempt(text: str) -> str:
    """The previous attempt as it goes into a correction prompt (first line, no mark, capped)."""
    return text.split("\n", 1)[0].replace(MARK, "")[:MAX_ATTEMPT_CHARS]


def _valid_feedback(feedback: str) -> bool:
    if feedback in (NO_FEEDBACK, WRONG):
        return True
    return feedback.isascii() and feedback.isdigit() and int(feedback) <= MAX_STEP_INDEX


def build(task_prompt: str, attempt: str, feedback: str) -> str:
    """The correction prompt for `attempt` at `task_prompt` with `feedback` (`?`, `x` or a step
    index). Raises ValueError on a task prompt holding the mark or on unknown feedback."""
    if MARK in task_prompt:
        raise ValueError(
            f"task prompt {task_prompt[:40]!r} contains the correction mark {MARK!r}; "
            "correction prompts need prompts without it"
        )
    if not _valid_feedback(feedback):
        raise ValueError(
            f"correction feedback {feedback!r}: expected {NO_FEEDBACK!r}, {WRONG!r} or a step "
            f"index 0..{MAX_STEP_INDEX}"
        )
    return f"{task_prompt}{clean_attempt(attempt)}{MARK}{feedback}{MARK}"


def parse(text: str, task_prompt: str) -> tuple[str, str] | None:
    """(previous attempt, feedback) of a correction prompt made for `task_prompt`; None for
    anything that `build` could not have made (defensive: never raises)."""
    if not isinstance(text, str) or not text.startswith(task_prompt) or MARK in task_prompt:
        return None
    rest = text[len(task_prompt) :]
    parts = rest.split(MARK)
    if len(parts) != 3 or parts[2] != "" or "\n" in parts[0]:
        return None
    attempt, feedback = parts[0], parts[1]
    if len(attempt) > MAX_ATTEMPT_CHARS or not _valid_feedback(feedback):
        return None
    return attempt, feedback


def feedback_for(
    kind: FeedbackKind,
    family: Family,
    task: Task,
    trace: Trace,
    step_scores: list[float] | None = None,
) -> str:
    """What the Evaluator tells the model about a trace judged wrong: nothing (`none`), `x`
    (`outcome`), or the first wrong step's index (`step`; `x` when no step is found wrong or
    the steps cannot be checked)."""
    if kind == "none":
        return NO_FEEDBACK
    if kind == "step":
        i = first_wrong_step(family, task, trace, step_scores)
        if i is not None and i <= MAX_STEP_INDEX:
            return str(i)
    return WRONG
