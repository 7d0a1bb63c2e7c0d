"""Rationalisation hints (STaR): the gold answer is shown before the prompt, so the model can
write a rationale that reaches it. The rationale is then trained on *without* the hint."""

from __future__ import annotations

HINT_MARK = "@"


def hinted(prompt: str, answer: str) -> str:
    return f"{answer}{HINT_MARK}{prompt}"
