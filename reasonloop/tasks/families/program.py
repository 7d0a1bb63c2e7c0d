"""Program tasks: evaluate a small integer program (`reasonloop.tasks.programs`).

`3+4*2=` -> `4*2=8;3+8=11#11`. The level is the number of binary operations (1 and up); the
generator writes `+ - *` over literals 0 .. 10**digits - 1 with random parenthesisation, so
Python's precedence decides the step order. Programs written by a model (the learned proposer)
may also use `//`, `%`, `**` and unary minus.

Gold answers: `make_batch` draws many programs and runs them in one sandbox call
(`programs.run_programs`), keeping those whose run is ok and whose reference steps reproduce the
sandbox's answer (`params["gold"] = "sandbox"`). `make`, which callers use one task at a time
(the held-out set, `creator.propose`: hundreds of calls), would pay a sandbox process per task;
by default it takes the answer from the reference steps over the generator's *own* program
(our code, not model text; `params["gold"] = "reference"`), and the reliability check
(`creator.reliability.execution_check`) re-derives it in the sandbox, batched. With
`sandbox_gold: true`, `make` runs the sandbox too. Model-written programs (the learned
proposer) always get their answer from the sandbox. Options:

- `digits` (default 1): literals are drawn from 0 .. 10**digits - 1.
- `steps` (default True): write the reduction steps before the answer.
- `sandbox_gold` (default False): `make` runs each program in the sandbox for its answer.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from reasonloop.tasks import programs
from reasonloop.tasks.families.compact import CompactFamily, is_int, readable_step
from reasonloop.types import Task

_STEP = re.compile(r"(-?[0-9]{1,10})(\+|-|\*|//|%|\*\*)(-?[0-9]{1,10})=(-?[0-9]{1,12})", re.ASCII)


class ProgramFamily(CompactFamily):
    """`<program>=` -> its value, with `level` binary operations."""

    name: ClassVar[str] = "program"
    levels: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5, 6)
    standalone_steps: ClassVar[bool] = True
    max_program_answer: ClassVar[int] = programs.MAX_ABS
    """A proposed program's answer beyond this is rejected (`too_large`)."""

    def __init__(self, *, steps: bool = True, digits: int = 1, sandbox_gold: bool = False) -> None:
        if not is_int(digits) or not 1 <= digits <= 3:
            raise ValueError(f"program: option 'digits' must be an int in 1..3, got {digits!r}")
        if not isinstance(sandbox_gold, bool):
            raise ValueError(
                f"program: option 'sandbox_gold' must be true or false, got {sandbox_gold!r}"
            )
        super().__init__(steps=steps, digits=digits, sandbox_gold=sandbox_gold)
        self.digits, self.sandbox_gold = digits, sandbox_gold

    def draw(self, rng: random.Random, level: int) -> str:
        """A random program with `level` operations (`+ - *`), parenthesised where the random
        tree needs it."""
        n_ops = self.check_level(level)

        def build(k: int) -> tuple[str, str]:  # (text, top operator or "" for a literal)
            if k == 0:
                return str(rng.randint(0, 10**self.digits - 1)), ""
            left_ops = rng.randint(0, k - 1)
            op = rng.choice("+-*")
            (lt, lop), (rt, rop) = build(left_ops), build(k - 1 - left_ops)
            # Parenthesise a child only where Python would otherwise group it differently.
            prec = {"": 3, "*": 2, "+": 1, "-": 1}
            if prec[lop] < prec[op]:
                lt = f"({lt})"
            if prec[rop] <= prec[op]:
                rt = f"({rt})"
            return lt + op + rt, op

        return build(n_ops)[0]

    def from_program(self, text: str, answer: str, level: int | None = None) -> Task:
        """The task of a checked program whose sandbox answer is `answer`."""
        prog = programs.canonical(text)
        ops = programs.operation_count(prog)
        return self.task(
            prog + "=", answer, level if level is not None else ops, {"program": prog, "ops": ops}
        )

    def program_level(self, text: str) -> int:
        """The level a checked program would have as a task: its operation count."""
        return programs.operation_count(text)

    def task_from_proposal(self, text: str, answer: str) -> Task:
        """The task of a proposed program that the sandbox ran to `answer`; raises
        `ProgramRejected` when it has no operation (`trivial`: its answer is its text) or our
        reference steps do not reach the sandbox's value (`reference_mismatch`)."""
        task = self.from_program(text, answer)
        if task.params["ops"] == 0:
            raise programs.ProgramRejected("trivial", "no operation: the answer is the program")
        steps_answer = self._steps_answer(task)
        if steps_answer != answer:
            raise programs.ProgramRejected("reference_mismatch", f"steps give {steps_answer}")
        return task

    def make_batch(self, rng: random.Random, levels: list[int]) -> list[Task]:
        """One task per entry of `levels` that verifies (sandbox answer ok, steps agree), all in
        one sandbox call."""
        texts = [self.draw(rng, lv) for lv in levels]
        out = []
        for text, lv, res in zip(texts, levels, programs.run_programs(texts), strict=True):
            answer, _why = programs.gold_answer(res)
            if answer is None:
                continue
            task = self.from_program(text, answer, lv)
            task.params["gold"] = "sandbox"
            if self._steps_answer(task) == answer:
                out.append(task)
        return out

    def _steps_answer(self, task: Task) -> str:
        """The answer our reference steps reach on `task`'s program, or "(why)" where they fail."""
        try:
            return self.solve(task)[1]
        except ValueError as e:
            return f"({e})"

    def make(self, rng: random.Random, level: int) -> Task:
        """A task at `level`: its answer from the reference steps over our own program, or from
        the sandbox with `sandbox_gold` (redrawn in the rare case a draw fails to verify)."""
        if not self.sandbox_gold:
            text = self.draw(rng, level)
            task = self.from_program(text, programs.reduce_steps(text)[-1].rsplit("=", 1)[1], level)
            task.params["gold"] = "reference"
            return task
        for _ in range(20):
            got = self.make_batch(rng, [level])
            if got:
                return got[0]
        raise RuntimeError(f"program: no program at level {level} verified in 20 draws")

    def solve(self, task: Task) -> tuple[list[str], str]:
        """One `a op b=c` step per operation, in Python's evaluation order."""
        prog = self.param(
            task, "program", "a program of the grammar", lambda v: programs.check_program(v) is None
        )
        steps, value = programs.reduce_program(prog)
        return steps, str(value)

    def check_step(self, task: Task, step: Any) -> bool | None:
        """Is `a op b=c` arithmetically right? None if it is not of that form."""
        text = readable_step(step)
        match = _STEP.fullmatch(text) if text is not None else None
        if match is None:
            return None
        a, op, b, c = match.groups()
        x, y = int(a), int(b)
        if op in ("//", "%") and y == 0 or op == "**" and not 0 <= y <= 30:
            return False
        value = {"+": x + y, "-": x - y, "*": x * y}.get(op)
        if value is None:
            value = x // y if op == "//" else x % y if op == "%" else x**y
        return value == int(c)
