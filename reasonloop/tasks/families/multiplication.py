"""Long multiplication by one digit: an n-digit number times a digit, digit by digit.

`347*6=` -> `7*6=42,42;4*6+4=28,282;3*6+2=20,2082#2082`. Each step takes one digit of the
first factor, least significant first: `digit*m+carry=value`, then `,` and the partial product
of the digits done so far (`47*6=282`), which is `value` written in front of the previous
partial product less its carry digits. The last partial product is the answer, so the model
only copies it; the carry (the tens of `value`) is omitted when it is 0.

The level is the number of digits of the first factor (1 and up). Options: `max_multiplier`
(default 9; the multiplier is drawn from 2 .. max_multiplier), `steps` (default True).
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from reasonloop.tasks.families.compact import CompactFamily, is_int, readable_step
from reasonloop.types import Task

_STEP = re.compile(r"([0-9])\*([0-9])(?:\+([0-9]))?=([0-9]{1,2}),([0-9]{1,40})", re.ASCII)


def _is_operand(v: Any) -> bool:
    return is_int(v) and v >= 1


def _is_multiplier(v: Any) -> bool:
    return is_int(v) and 1 <= v <= 9


class MultiplicationFamily(CompactFamily):
    """`a*m=` -> the product, with an n-digit `a` at level n and a digit `m`."""

    name: ClassVar[str] = "multiplication"
    levels: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5, 6)

    def __init__(self, *, steps: bool = True, max_multiplier: int = 9) -> None:
        if not is_int(max_multiplier) or not 2 <= max_multiplier <= 9:
            raise ValueError(
                f"multiplication: option 'max_multiplier' must be an int in 2..9, "
                f"got {max_multiplier!r}"
            )
        super().__init__(steps=steps, max_multiplier=max_multiplier)
        self.max_multiplier = max_multiplier

    def make(self, rng: random.Random, level: int) -> Task:
        """A uniform `level`-digit number times a multiplier in 2 .. max_multiplier."""
        n = self.check_level(level)
        a = rng.randint(10 ** (n - 1), 10**n - 1)
        return self.from_operands(a, rng.randint(2, self.max_multiplier))

    def from_operands(self, a: int, m: int) -> Task:
        """The task `a*m=` (a >= 1, m a digit 1..9); its level is the number of digits of a."""
        if not _is_operand(a) or not _is_multiplier(m):
            raise ValueError(
                f"multiplication: need an int a >= 1 and a digit m in 1..9, got {a!r}, {m!r}"
            )
        return self.task(f"{a}*{m}=", str(a * m), len(str(a)), {"a": a, "m": m})

    def _operands(self, task: Task) -> tuple[int, int]:
        a = self.param(task, "a", "an int >= 1", _is_operand)
        return a, self.param(task, "m", "an int in 1..9", _is_multiplier)

    def solve(self, task: Task) -> tuple[list[str], str]:
        """One `digit*m+carry=value,partial` step per digit of `a`, least significant first."""
        a, m = self._operands(task)
        steps, carry, partial = [], 0, ""
        for i, digit in enumerate(reversed(str(a))):
            value = int(digit) * m + carry
            partial = str(value) + (partial[-i:] if i else "")
            added = f"+{carry}" if carry else ""
            steps.append(f"{digit}*{m}{added}={value},{partial}")
            carry = value // 10
        return steps, partial

    def check_step(self, task: Task, step: Any) -> bool | None:
        """Is `d*m+c=v,p` right for this task: d the i-th digit of a (from the right), c the
        carry into it, v = d*m+c, and p the product of m with a's last i digits, written as
        `v` followed by i-1 digits? None if the step is not of that form."""
        text = readable_step(step)
        match = _STEP.fullmatch(text) if text is not None else None
        if match is None:
            return None
        a, m = self._operands(task)
        d, mult, c, v, p = match.groups()
        d, mult, c, value = int(d), int(mult), int(c or 0), int(v)
        i = len(p) - len(v)  # digits of `a` below this one
        if mult != m or d * m + c != value or v != str(value) or not p.startswith(v):
            return False
        if i >= len(str(a)) or int(str(a)[-1 - i]) != d:
            return False
        low = a % 10**i
        return c == low * m // 10**i and int(p) == (a % 10 ** (i + 1)) * m
