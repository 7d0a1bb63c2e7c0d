"""What the compact families of the tiny testbed share.

A compact family writes a task as a short prompt ending in `=` or `:` and its gold solution as
small, locally checkable steps in the shared format of `reasonloop.reasoner.format`
(`step;step#answer`, then a newline). This base adds the parts every such family needs: the
`steps` switch (train or solve with or without steps), level checks, reading the task's
parameters with clear errors, a strict verifier that never raises, and `check_step`.

`check_step(task, step)` asks whether a step is a *true statement about this task*: `3+5=8` is
true anywhere, `3x=15` is true when the task's x satisfies it, `1,2` is true when 1 and 2 are
the task's two smallest items. It says nothing about whether the step is the one the reference
takes next, so a process verifier can accept any sound route to the answer.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from reasonloop.reasoner.format import render
from reasonloop.tasks.base import Family
from reasonloop.types import Task

MAX_STEP_CHARS = 200
"""Longer steps are not parsed: no compact family writes one, so it is noise."""

_INT = re.compile(r"[+-]?[0-9]{1,40}", re.ASCII)


def read_int(text: str) -> int | None:
    """The integer written in `text` (ASCII digits, optional sign, at most 40 digits), else None."""
    if not isinstance(text, str) or not _INT.fullmatch(text):
        return None
    return int(text)


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON round trips keep ints as ints)."""
    return isinstance(value, int) and not isinstance(value, bool)


def signed(value: int) -> str:
    """`+7` or `-7`: a term written after another one."""
    return f"+{value}" if value >= 0 else f"-{-value}"


class CompactFamily(Family):
    """A procedural family whose gold traces a character-level model can learn."""

    def __init__(self, *, steps: bool = True, **options: Any) -> None:
        if not isinstance(steps, bool):
            raise ValueError(f"{self.name}: option 'steps' must be true or false, got {steps!r}")
        super().__init__(steps=steps, **options)
        self.steps = steps

    @abstractmethod
    def solve(self, task: Task) -> tuple[list[str], str]:
        """The full gold trace (steps, answer), whatever the `steps` switch says."""

    @abstractmethod
    def check_step(self, task: Task, step: str) -> bool | None:
        """True if `step` is a true statement about `task`, False if it is false, None if it
        cannot be read. Never raises on any `step`."""

    def reference(self, task: Task) -> tuple[list[str], str]:
        """The gold solution: its steps (none when the family is built with `steps=False`)."""
        steps, answer = self.solve(task)
        return (steps if self.steps else []), answer

    def completion(self, task: Task) -> str:
        """The gold completion text, newline-terminated, as the model should write it."""
        return render(*self.reference(task)) + "\n"

    def verify(self, task: Task, answer: Any) -> float:
        """1.0 for exactly the gold answer string (surrounding whitespace aside), else 0.0.

        Strict on purpose: a reward for `05` or `5.0` would teach a model a non-canonical form.
        """
        if not isinstance(answer, str) or not isinstance(task.answer, str):
            return 0.0
        return 1.0 if answer.strip() == task.answer.strip() != "" else 0.0

    def check_level(self, level: Any) -> int:
        """`level` if this family can draw a task at it (any int from its easiest level up)."""
        if not is_int(level) or level < self.levels[0]:
            raise ValueError(
                f"{self.name}: level must be an int >= {self.levels[0]} "
                f"(standard levels {list(self.levels)}), got {level!r}"
            )
        return level

    def param(self, task: Task, key: str, expected: str, ok: Callable[[Any], bool]) -> Any:
        """`task.params[key]`, or a ValueError naming the task, the field and what was expected."""
        params = task.params if isinstance(task.params, dict) else {}
        value = params.get(key)
        try:
            good = value is not None and ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ValueError(
                f"{self.name} task {task.id!r}: params[{key!r}] must be {expected}, got {value!r}"
            )
        return value


def readable_step(step: Any) -> str | None:
    """`step` stripped, or None when it is not a string of a plausible step length."""
    if not isinstance(step, str) or len(step) > MAX_STEP_CHARS:
        return None
    return step.strip()
