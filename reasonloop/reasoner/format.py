"""The compact step format every tiny-testbed family shares.

A completion is `step;step;...;step#answer` followed by a newline; with no steps it is just the
answer. Parsing is defensive: model output is untrusted, and anything malformed yields
`answer=None` rather than an exception.
"""

from __future__ import annotations

STEP_SEP = ";"
ANSWER_MARK = "#"
MAX_ANSWER_CHARS = 256


def render(steps: list[str], answer: str) -> str:
    """The completion text for a solution (without the trailing newline)."""
    if not steps:
        return answer
    return STEP_SEP.join(steps) + ANSWER_MARK + answer


def parse(text: str) -> tuple[list[str], str | None]:
    """(steps, final answer) from a completion; answer is None when absent or malformed."""
    text = text.split("\n", 1)[0]
    if ANSWER_MARK in text:
        body, _, answer = text.rpartition(ANSWER_MARK)
        steps = [s for s in body.split(STEP_SEP) if s] if body else []
    else:
        steps, answer = [], text
    answer = answer.strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return steps, None
    return steps, answer
