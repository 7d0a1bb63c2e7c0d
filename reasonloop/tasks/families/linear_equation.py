"""Linear equations in one unknown with an integer solution: `ax+b=cx+d`.

`3x+4=19:` -> `3x=15;x=5#5`, and with x on both sides `5x+3=2x+12:` -> `3x+3=12;3x=9;x=3#3`.
Each step is one move applied to both sides (take away `cx`, take away `b`, divide by the
coefficient of x), written as the equation it gives, so a step is checked by putting the
task's solution into it.

Levels raise the coefficients and constants, bring in negatives, then put x on both sides:

| level | form      | a       | c                 | b          | x        |
|-------|-----------|---------|-------------------|------------|----------|
| 1     | ax+b=d    | 2..5    | 0                 | 1..9       | 0..9     |
| 2     | ax+b=d    | 2..9    | 0                 | +-(1..20)  | -9..9    |
| 3     | ax+b=d    | 2..15   | 0                 | +-(1..99)  | -20..20  |
| 4     | ax+b=cx+d | 2..9    | 1..a-1            | +-(1..20)  | -9..9    |
| 5     | ax+b=cx+d | 1..12   | 1..12, not a      | +-(1..50)  | -20..20  |

Levels above 5 draw as level 5. Options: `steps` (default True).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from reasonloop.tasks.families.compact import (
    CompactFamily,
    is_int,
    read_int,
    readable_step,
    signed,
)
from reasonloop.types import Task

_TERM = re.compile(r"([+-]?)([0-9]{0,12})(x?)", re.ASCII)
_SIDE = re.compile(
    r"[+-]?(?:[0-9]{0,12}x|[0-9]{1,12})(?:[+-](?:[0-9]{0,12}x|[0-9]{1,12}))*", re.ASCII
)


@dataclass(frozen=True)
class _Ranges:
    """What a level draws: coefficients a (left) and c (right; None for no x on the right),
    the left constant b (its size, and whether it may be negative) and the solution x."""

    a: tuple[int, int]
    c: tuple[int, int] | None
    c_below_a: bool
    b: tuple[int, int]
    b_negative: bool
    x: tuple[int, int]

    def _cs(self, a: int) -> list[int]:
        if self.c is None:
            return [0]
        top = min(self.c[1], a - 1) if self.c_below_a else self.c[1]
        return [c for c in range(self.c[0], top + 1) if c != a]

    def draw(self, rng: random.Random) -> tuple[int, int, int, int]:
        """(a, b, c, x)."""
        a = rng.randint(*self.a)
        c = rng.choice(self._cs(a))
        b = rng.randint(*self.b)
        if self.b_negative and rng.random() < 0.5:
            b = -b
        return a, b, c, rng.randint(*self.x)

    def admits(self, a: int, b: int, c: int, x: int) -> bool:
        """Could `draw` have given these numbers?"""
        return (
            self.a[0] <= a <= self.a[1]
            and c in self._cs(a)
            and self.b[0] <= abs(b) <= self.b[1]
            and (b > 0 or self.b_negative)
            and self.x[0] <= x <= self.x[1]
        )


class LinearEquationFamily(CompactFamily):
    """`ax+b=cx+d:` -> x, an integer."""

    name: ClassVar[str] = "linear_equation"
    levels: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5)
    standalone_steps: ClassVar[bool] = True

    def __init__(self, *, steps: bool = True) -> None:
        super().__init__(steps=steps)

    def make(self, rng: random.Random, level: int) -> Task:
        """An equation drawn from the level's ranges (see the module docstring)."""
        a, b, c, x = _LEVELS[min(self.check_level(level), self.levels[-1])].draw(rng)
        return self.from_coefficients(a, b, c, (a - c) * x + b, level=level)

    def from_coefficients(self, a: int, b: int, c: int, d: int, level: int | None = None) -> Task:
        """The task `ax+b=cx+d` (c = 0 for x on the left only); a != c and the solution must be
        an integer. `level` defaults to the easiest level whose ranges hold these numbers."""
        if not all(map(is_int, (a, b, c, d))) or a == c or (d - b) % (a - c):
            raise ValueError(
                f"linear_equation: need ints a != c with (d-b)/(a-c) an integer, "
                f"got a={a!r} b={b!r} c={c!r} d={d!r}"
            )
        x = (d - b) // (a - c)
        prompt = f"{_expr(a, b)}={_expr(c, d)}:"
        if level is None:
            level = _level_of(a, b, c, x)
        params = {"a": a, "b": b, "c": c, "d": d}
        return self.task(prompt, str(x), level, params)

    def _coefficients(self, task: Task) -> tuple[int, int, int, int]:
        a, b, c, d = (self.param(task, k, "an int", is_int) for k in "abcd")
        if a == c or (d - b) % (a - c):
            raise ValueError(
                f"linear_equation task {task.id!r}: params a={a} b={b} c={c} d={d} do not give "
                f"an integer solution"
            )
        return a, b, c, d

    def solve(self, task: Task) -> tuple[list[str], str]:
        """Take away cx, then b, then divide by the coefficient of x: one equation a move."""
        a, b, c, d = self._coefficients(task)
        steps = []
        if c:
            a, c = a - c, 0
            steps.append(f"{_expr(a, b)}={d}")
        if b:
            b, d = 0, d - b
            steps.append(f"{_expr(a, 0)}={d}")
        if a != 1:
            a, d = 1, d // a
            steps.append(f"x={d}")
        return steps or [f"x={d}"], str(d)

    def backward(self, task: Task, answer: str) -> list[Task]:
        """Hide `a` and give the candidate x*: `x*y+b=cx*+d` (both sides negated when x* < 0),
        an equation in the same format whose solution is `a` exactly when x* solves the task
        (a != c). With x* = 0 it hides `b` instead (`y=d`, which is `b` only when x = 0).
        Nothing when x* is not an integer or the equation in y has no integer solution (then no
        integer `a` fits x* either). With x on both sides, `cx*+d` is written out as one number:
        the format has no products."""
        x = read_int(answer)
        if x is None:
            return []
        a, b, c, d = self._coefficients(task)
        if x == 0:
            which, hidden, q = "b", b, self.from_coefficients(1, 0, 0, d)
        elif (c * x + d - b) % x:
            return []
        else:
            # A negative x* would make a negative coefficient, which no level draws: both
            # sides are negated instead (the same equation, in the form the model has seen).
            sign = 1 if x > 0 else -1
            q = self.from_coefficients(sign * x, sign * b, 0, sign * (c * x + d))
            which, hidden = "a", a
        return [self.backward_task(task, q.prompt, str(hidden), answer.strip(), which, q.params)]

    def check_step(self, task: Task, step: Any) -> bool | None:
        """Does the task's solution satisfy the equation `step` (two linear sides in x)?
        None if the step is not such an equation."""
        text = readable_step(step)
        if text is None or text.count("=") != 1:
            return None
        sides = [_linear(s) for s in text.split("=")]
        if sides[0] is None or sides[1] is None:
            return None
        a, b, c, d = self._coefficients(task)
        x = (d - b) // (a - c)
        (p, q), (r, s) = sides
        return p * x + q == r * x + s


_LEVELS = {
    1: _Ranges(a=(2, 5), c=None, c_below_a=False, b=(1, 9), b_negative=False, x=(0, 9)),
    2: _Ranges(a=(2, 9), c=None, c_below_a=False, b=(1, 20), b_negative=True, x=(-9, 9)),
    3: _Ranges(a=(2, 15), c=None, c_below_a=False, b=(1, 99), b_negative=True, x=(-20, 20)),
    4: _Ranges(a=(2, 9), c=(1, 8), c_below_a=True, b=(1, 20), b_negative=True, x=(-9, 9)),
    5: _Ranges(a=(1, 12), c=(1, 12), c_below_a=False, b=(1, 50), b_negative=True, x=(-20, 20)),
}


def _level_of(a: int, b: int, c: int, x: int) -> int:
    """The easiest level that could have drawn these numbers (5 when none could)."""
    return next((lv for lv, r in _LEVELS.items() if r.admits(a, b, c, x)), max(_LEVELS))


def _expr(coef: int, const: int) -> str:
    """`3x-4`, `-x`, `x+2`, `7`, `0`: a linear expression with the zero parts left out."""
    if coef == 0:
        return str(const)
    term = {1: "x", -1: "-x"}.get(coef, f"{coef}x")
    return term + (signed(const) if const else "")


def _linear(side: str) -> tuple[int, int] | None:
    """(coefficient of x, constant) of a sum of terms like `3x-4+x`, or None if unreadable."""
    if not _SIDE.fullmatch(side):
        return None
    coef = const = 0
    for sign, digits, x in _TERM.findall(side):
        if not (digits or x):
            continue
        value = (-1 if sign == "-" else 1) * int(digits or "1")
        if x:
            coef += value
        else:
            const += value
    return coef, const
