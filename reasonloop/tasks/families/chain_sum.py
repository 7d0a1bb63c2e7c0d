"""Chained sums: add k small numbers, one running total a step.

`3+5+2+7=` -> `3+5=8;8+2=10;10+7=17#17`. The level is the number of terms (2 and up). Options:

- `digits` (default 1): terms are drawn from 0 .. 10**digits - 1.
- `negative_from` (default None, never): from this level on, each term after the first is
  subtracted with probability 1/2 (`9-4+2=` -> `9-4=5;5+2=7#7`), so totals can go negative.
- `steps` (default True): write the running totals before the answer.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from reasonloop.tasks.families.compact import (
    CompactFamily,
    is_int,
    read_int,
    readable_step,
    signed,
)
from reasonloop.types import Task

_STEP = re.compile(r"(-?[0-9]{1,18})([+-])([0-9]{1,18})=(-?[0-9]{1,19})", re.ASCII)


class ChainSumFamily(CompactFamily):
    """`t1+t2+...+tk=` -> the total, with k terms at level k."""

    name: ClassVar[str] = "chain_sum"
    levels: ClassVar[tuple[int, ...]] = (2, 3, 4, 5, 6, 7, 8)
    standalone_steps: ClassVar[bool] = True

    def __init__(
        self, *, steps: bool = True, digits: int = 1, negative_from: int | None = None
    ) -> None:
        if not is_int(digits) or not 1 <= digits <= 6:
            raise ValueError(f"chain_sum: option 'digits' must be an int in 1..6, got {digits!r}")
        if negative_from is not None and not is_int(negative_from):
            raise ValueError(
                f"chain_sum: option 'negative_from' must be a level (int) or null, "
                f"got {negative_from!r}"
            )
        super().__init__(steps=steps, digits=digits, negative_from=negative_from)
        self.digits, self.negative_from = digits, negative_from

    def make(self, rng: random.Random, level: int) -> Task:
        """`level` terms in 0 .. 10**digits - 1, some subtracted from `negative_from` on."""
        return self.from_terms(self.draw_terms(rng, level))

    def draw_terms(self, rng: random.Random, level: int) -> list[int]:
        """The terms of a task at `level` (`make`'s draw)."""
        k = self.check_level(level)
        terms = [rng.randint(0, 10**self.digits - 1) for _ in range(k)]
        if self.negative_from is not None and k >= self.negative_from:
            terms[1:] = [-t if rng.random() < 0.5 else t for t in terms[1:]]
        return terms

    def from_terms(self, terms: list[int]) -> Task:
        """The task summing `terms` (a negative term after the first is written `-t`)."""
        prompt = self.expression(terms) + "="
        return self.task(prompt, str(sum(terms)), len(terms), {"terms": list(terms)})

    def expression(self, terms: list[int]) -> str:
        """`terms` written as a sum (`9-4+2`), or a ValueError naming the family."""
        if not isinstance(terms, list) or len(terms) < 2 or not all(map(is_int, terms)):
            raise ValueError(f"{self.name}: terms must be a list of >= 2 ints, got {terms!r}")
        return str(terms[0]) + "".join(signed(t) for t in terms[1:])

    def solve(self, task: Task) -> tuple[list[str], str]:
        """One `total+term=new total` step per term after the first."""
        terms = self.param(
            task,
            "terms",
            "a list of >= 2 ints",
            lambda v: isinstance(v, list) and len(v) >= 2 and all(map(is_int, v)),
        )
        total, steps = terms[0], []
        for t in terms[1:]:
            steps.append(f"{total}{signed(t)}={total + t}")
            total += t
        return steps, str(total)

    def backward(self, task: Task, answer: str) -> list[Task]:
        """Hide the last term, then the first, and give the candidate total T: `T-t1-...-t(k-1)=`
        is a chained sum (with subtractions, so the model must have learnt them: `negative_from`)
        whose total is the hidden term exactly when T is the task's total."""
        total = read_int(answer)
        if total is None:
            return []
        terms = self.param(
            task,
            "terms",
            "a list of >= 2 ints",
            lambda v: isinstance(v, list) and len(v) >= 2 and all(map(is_int, v)),
        )
        out = []
        for which, i in (("last", len(terms) - 1), ("first", 0)):
            rest = [-t for j, t in enumerate(terms) if j != i]
            q = self.from_terms([total, *rest])
            out.append(
                self.backward_task(task, q.prompt, str(terms[i]), answer.strip(), which, q.params)
            )
        return out

    def check_step(self, task: Task, step: Any) -> bool | None:
        """Is `a+b=c` (or `a-b=c`) arithmetically right? None if it is not of that form."""
        text = readable_step(step)
        match = _STEP.fullmatch(text) if text is not None else None
        if match is None:
            return None
        a, op, b, c = match.groups()
        return int(a) + (int(b) if op == "+" else -int(b)) == int(c)
