"""What a task family is: a generator with difficulty levels, a reference solver and a verifier."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from reasonloop.evaluator.forward_backward import text_questions
from reasonloop.reasoner import format as step_format
from reasonloop.types import Task, stable_id


class Family(ABC):
    """A procedural task family.

    `make` draws a task at a difficulty level; `reference` gives the step-by-step gold trace
    (steps and final answer) in the family's compact format; `verify` scores an answer in [0, 1]
    (1.0 means exactly right; filters on a model's own answers require exactly 1.0).
    """

    name: ClassVar[str]
    levels: ClassVar[tuple[int, ...]]
    """Difficulty levels this family can generate, easiest first."""
    standalone_steps: ClassVar[bool] = False
    """Each step is a statement that holds on its own (`4*2=8`, `x=5`), so a repeated or wrong
    step can be dropped and the rest still says the same (`postprocess/summarise.py`). False
    where a step's place carries meaning (addition's columns, a sort's picks)."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def make(self, rng: random.Random, level: int) -> Task:
        """A fresh task at `level` with its gold answer."""

    @abstractmethod
    def reference(self, task: Task) -> tuple[list[str], str]:
        """The gold step-by-step solution: (steps, final answer)."""

    def verify(self, task: Task, answer: str | None) -> float:
        """1.0 if `answer` is the gold answer, else 0.0. Families override for looser checks."""
        if answer is None or task.answer is None:
            return 0.0
        return 1.0 if answer.strip() == task.answer.strip() else 0.0

    def parse(self, text: str) -> tuple[list[str], str | None]:
        """(steps, final answer) of a completion. The shared compact format by default; a family
        whose answer is read off its steps overrides this (and `render`)."""
        return step_format.parse(text)

    def render(self, steps: list[str], answer: str) -> str:
        """The completion text of a solution (inverse of `parse`)."""
        return step_format.render(steps, answer)

    def answer_length(self, task: Task) -> int | None:
        """The number of characters the completion's answer must have, when the prompt alone
        fixes it (a format with padded operands), else None (the default)."""
        return None

    def backward(self, task: Task, answer: str) -> list[Task]:
        """Backward questions (FOBAR, `evaluator/forward_backward.py`) that check a candidate
        `answer` to `task` without its gold answer: the question with one of its numbers hidden
        and `answer` given as known, posed in this family's own format. Each question's `answer`
        is the hidden number, which a solver recovers only if `answer` agrees with the question.
        Empty when this family cannot pose one for `answer` (the default: none at all)."""
        return []

    def template_backward(self, task: Task, answer: str) -> list[Task]:
        """FOBAR's text-template questions for a numeric `answer` (`text_questions`): a number
        of a natural-language prompt becomes X, to be found from the answer."""
        return [
            self.backward_task(task, q, hidden, answer.strip(), str(i))
            for i, (q, hidden) in enumerate(text_questions(task.prompt, answer))
        ]

    def backward_task(
        self,
        task: Task,
        prompt: str,
        hidden: str,
        candidate: str,
        which: str,
        params: dict[str, Any] | None = None,
    ) -> Task:
        """One backward question of `task`, with its lineage: parent `task`, and in `params` the
        candidate it tests and which number it hides, beside the question's own `params` (so
        the family can solve and check it like any of its tasks)."""
        return Task(
            id=stable_id(self.name, "backward", task.id, candidate, which),
            family=self.name,
            prompt=prompt,
            answer=hidden,
            difficulty=task.difficulty,
            params={**(params or {}), "candidate": candidate, "hidden": which},
            parents=[task.id],
            made_by=f"{self.name}@backward",
            round=task.round,
            split=task.split,
        )

    def task(self, prompt: str, answer: str, level: int, params: dict[str, Any]) -> Task:
        """Build a Task with a content id, so the same task has the same id everywhere."""
        return Task(
            id=stable_id(self.name, prompt),
            family=self.name,
            prompt=prompt,
            answer=answer,
            difficulty=level,
            params=params,
            made_by=f"{self.name}@generator",
        )
