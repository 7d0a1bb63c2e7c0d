"""Multi-digit addition: the easy-to-hard / length-generalisation family of the tiny testbed.

Level n adds two n-digit numbers. The answer format is chosen by options, because it decides
whether a small transformer can learn the task and stretch it to longer numbers:

- `reverse` (default True): the sum is written least significant digit first, so every answer
  digit depends only on the operand digits and the carry already written (`58+123` -> `181`).
- `reverse_operands` (default True): the operands are written least significant digit first
  too, so answer digit i sits at the same offset as operand digits i (`850+321=1810`).
- `pad` (default True): operands are zero-padded to n digits and the answer to n+1 digits, so
  every task of a level has the same shape (`058+123=1810` with operands in reading order).
- `pad_carry` (default False): operands zero-padded to n+1 digits, the width of the answer, so
  that its last (carry) digit too has a column of operand digits (zeros) at its index
  (`0850+3210=1810`); the end of the answer is then the first index without operand digits.
- `steps` (default False): the completion first lists one step per column, least significant
  first, `x+y+c=t` (digits x and y, incoming carry c, column total t), then `#` and the answer,
  in the shared compact format of `reasonloop.reasoner.format`.

The defaults are the format measured best for the tiny model (docs/easy-to-hard.md): with the
operands reversed too, a 0.8M-parameter model trained 2500 steps on 1-3 digits got 100% of
3-digit sums right, against 10% with the operands in reading order.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from reasonloop.reasoner.format import render
from reasonloop.tasks import programs
from reasonloop.tasks.base import Family
from reasonloop.types import Task

MAX_LEVEL = 20
_STEP = re.compile(r"^(\d)\+(\d)\+([01])=(\d{1,2})$")
_PROMPT = re.compile(r"(\d{1,40})\+(\d{1,40})=", re.ASCII)
_PROGRAM = re.compile(r"([0-9]{1,40})\+([0-9]{1,40})", re.ASCII)


def _columns(a: int, b: int, width: int) -> list[tuple[int, int, int, int]]:
    """(x, y, carry in, column total) for each column, least significant first."""
    cols, carry = [], 0
    for i in range(width):
        x, y = (a // 10**i) % 10, (b // 10**i) % 10
        total = x + y + carry
        cols.append((x, y, carry, total))
        carry = total // 10
    return cols


class AdditionFamily(Family):
    """`a+b=` -> the sum, with n-digit operands at level n (1..20)."""

    name: ClassVar[str] = "addition"
    levels: ClassVar[tuple[int, ...]] = tuple(range(1, MAX_LEVEL + 1))
    max_program_answer: ClassVar[int] = 2 * 10**MAX_LEVEL
    """A proposed program's answer beyond this is rejected (`too_large`)."""

    def __init__(
        self,
        reverse: bool = True,
        pad: bool = True,
        steps: bool = False,
        reverse_operands: bool = True,
        pad_carry: bool = False,
    ) -> None:
        options = dict(
            reverse=reverse,
            pad=pad,
            steps=steps,
            reverse_operands=reverse_operands,
            pad_carry=pad_carry,
        )
        for key, value in options.items():
            if not isinstance(value, bool):
                raise TypeError(f"AdditionFamily option {key!r} must be a bool, got {value!r}")
        super().__init__(**options)
        self.reverse, self.pad, self.steps = reverse, pad, steps
        self.reverse_operands, self.pad_carry = reverse_operands, pad_carry

    def make(self, rng: random.Random, level: int) -> Task:
        """Two uniform n-digit operands (0..9 at level 1), drawn from `rng` only."""
        if level not in self.levels:
            raise ValueError(f"addition level must be in 1..{MAX_LEVEL}, got {level!r}")
        low = 0 if level == 1 else 10 ** (level - 1)
        return self.from_operands(
            rng.randrange(low, 10**level), rng.randrange(low, 10**level), level
        )

    def draw(self, rng: random.Random, level: int) -> str:
        """A program `a+b` (reading order) of a level-`level` task: what the learned proposer
        of `creator.mode: self-play` learns to write (`tasks/proposer.py`)."""
        task = self.make(rng, level)
        return f"{task.params['a']}+{task.params['b']}"

    @staticmethod
    def _program_operands(text: str) -> tuple[int, int]:
        """The operands of a program `a+b`; `ProgramRejected` (`off_family`) for any other."""
        m = _PROGRAM.fullmatch(programs.canonical(text)) if isinstance(text, str) else None
        if m is None:
            raise programs.ProgramRejected(
                "off_family", "addition tasks are a+b of two non-negative integer literals"
            )
        return int(m.group(1)), int(m.group(2))

    def program_level(self, text: str) -> int:
        """The level of a program `a+b`: its longer operand's digit count. Raises
        `ProgramRejected` (`off_family`) for any other program."""
        return max(len(str(x)) for x in self._program_operands(text))

    def task_from_proposal(self, text: str, answer: str) -> Task:
        """The task of a proposed program `a+b` that the sandbox ran to `answer`, in this
        family's format, with the program in `params["program"]`; raises `ProgramRejected`:
        `off_family` (not `a+b`), `too_large` (an operand beyond level MAX_LEVEL),
        `reference_mismatch` (the sandbox's value is not the sum)."""
        a, b = self._program_operands(text)
        level = max(len(str(a)), len(str(b)))
        if level > MAX_LEVEL:
            raise programs.ProgramRejected("too_large", f"operands above {MAX_LEVEL} digits")
        if answer != str(a + b):
            raise programs.ProgramRejected("reference_mismatch", f"the sum is {a + b}")
        task = self.from_operands(a, b, level)
        task.params["program"] = f"{a}+{b}"
        return task

    def from_operands(self, a: int, b: int, level: int) -> Task:
        """The task `a+b=` at `level` (operands must fit in `level` digits)."""
        if level not in self.levels or not (0 <= a < 10**level and 0 <= b < 10**level):
            raise ValueError(
                f"addition operands {a!r}, {b!r} must be in 0..10**level-1 with level in "
                f"1..{MAX_LEVEL}, got level {level!r}"
            )
        params = {"a": a, "b": b, "digits": level}
        return self.task(self.prompt(a, b, level), self.answer(a + b, level), level, params)

    def prompt(self, a: int, b: int, level: int) -> str:
        """`a+b=`, operands zero-padded to `level` digits when `pad` (`level` + 1: `pad_carry`)."""
        width = level + 1 if self.pad_carry else level if self.pad else 0
        x, y = f"{a:0{width}d}", f"{b:0{width}d}"
        if self.reverse_operands:
            x, y = x[::-1], y[::-1]
        return f"{x}+{y}="

    def answer(self, total: int, level: int) -> str:
        """The sum in this family's format (padded to level + 1 digits, reversed)."""
        text = f"{total:0{level + 1}d}" if self.pad else str(total)
        return text[::-1] if self.reverse else text

    def answer_length(self, task: Task) -> int | None:
        """Answer-only and padded: one digit more than the operands' (`pad`) width, read off
        the prompt (`0850+3210=`: 4 with `pad_carry`). None for other formats."""
        if self.steps or not self.pad:
            return None
        m = _PROMPT.fullmatch(task.prompt) if isinstance(task.prompt, str) else None
        if m is None or len(m.group(1)) != len(m.group(2)):
            return None
        width = len(m.group(1))
        return width if self.pad_carry else width + 1

    def reference(self, task: Task) -> tuple[list[str], str]:
        """One `x+y+c=t` step per column (when `steps`), then the answer."""
        a, b, level = self._operands(task)
        answer = self.answer(a + b, level)
        if not self.steps:
            return [], answer
        return [f"{x}+{y}+{c}={t}" for x, y, c, t in _columns(a, b, level)], answer

    def completion(self, task: Task) -> str:
        """The gold completion text, newline-terminated, as the model should write it."""
        return render(*self.reference(task)) + "\n"

    def verify(self, task: Task, answer: Any) -> float:
        """1.0 only for exactly the gold answer string (after stripping); never raises."""
        if not isinstance(answer, str) or not isinstance(task.answer, str):
            return 0.0
        return 1.0 if answer.strip() == task.answer.strip() else 0.0

    def check_step(self, task: Task, step: Any) -> bool | None:
        """Is `step` a right `x+y+c=t` for some column of this task (carry in included)?

        None when the task carries no operands to check against; False for anything malformed.
        """
        try:
            a, b, level = self._operands(task)
        except ValueError:
            return None
        if not isinstance(step, str):
            return False
        match = _STEP.match(step.strip())
        if match is None:
            return False
        column = tuple(int(g) for g in match.groups())
        return column in _columns(a, b, level)

    @staticmethod
    def _operands(task: Task) -> tuple[int, int, int]:
        params = task.params if isinstance(task.params, dict) else {}
        a, b, level = params.get("a"), params.get("b"), params.get("digits")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b, level)):
            raise ValueError(
                f"addition task {task.id!r}: params need int 'a', 'b', 'digits', got {params!r}"
            )
        return a, b, level
