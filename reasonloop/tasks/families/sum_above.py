"""Is a chained sum above a bound? A yes/no question whose reasoning is a chained sum.

`3+5+2+7>16?` -> `3+5=8;8+2=10;10+7=17;17-16=1#y`. The steps are `chain_sum`'s running totals
and then the total minus the bound; the answer is `y` when that is positive, else `n`. The bound
lies within 3 of the total (`total - 3 .. total + 2`, so `y` and `n` are equally likely): only
an exact total decides. Options and levels (the number of terms) are `chain_sum`'s.

Why a family of its own: the answer space is two letters, so a trace with a wrong step often
still states the right answer, and an outcome verifier passes it. That is the false-positive
problem of yes/no and multiple-choice benchmarks (StrategyQA, ARC, GPQA), the case made for
process supervision. It is a testbed for step filters (`benchmarks/methods.py --testbed
sum_above`), and a hard one for Monte-Carlo step labels: once a wrong step has fixed a lucky
answer, rollouts from its prefix reach the gold answer too, so the labels call it good
(docs/benchmarks.md).
"""

from __future__ import annotations

import random
from typing import ClassVar

from reasonloop.tasks.families.chain_sum import ChainSumFamily
from reasonloop.tasks.families.compact import is_int, signed
from reasonloop.types import Task

BELOW, ABOVE = 3, 2
"""The bound is drawn from total - BELOW .. total + ABOVE, BELOW + ABOVE + 1 values, BELOW of
them under the total: `y` and `n` equally likely."""


class SumAboveFamily(ChainSumFamily):
    """`t1+...+tk>B?` -> `y` if the total is above B, else `n`; k terms at level k."""

    name: ClassVar[str] = "sum_above"

    def make(self, rng: random.Random, level: int) -> Task:
        """A chained sum of `level` terms (as `chain_sum` draws them) and a bound near its total."""
        terms = self.draw_terms(rng, level)
        return self.from_terms(terms, sum(terms) + rng.randint(-BELOW, ABOVE))

    def from_terms(self, terms: list[int], bound: int | None = None) -> Task:
        """The question whether `terms` sum to more than `bound`."""
        expression = self.expression(terms)
        if not is_int(bound):
            raise ValueError(f"sum_above: the bound must be an int, got {bound!r}")
        prompt = expression + f">{bound}?"
        answer = "y" if sum(terms) > bound else "n"
        return self.task(prompt, answer, len(terms), {"terms": list(terms), "bound": bound})

    def solve(self, task: Task) -> tuple[list[str], str]:
        """`chain_sum`'s running totals, the total minus the bound, then `y` or `n`. The
        difference is a step of its own because a tiny model fails to compare two numbers that far
        apart in the text (a seed that wrote every total right still answered at chance)."""
        steps, total = super().solve(task)
        bound = self.param(task, "bound", "an int", is_int)
        t = int(total)
        return [*steps, f"{t}{signed(-bound)}={t - bound}"], "y" if t > bound else "n"

    def backward(self, task: Task, answer: str) -> list[Task]:
        """No backward question: a yes/no answer does not pin down a hidden term."""
        return []
