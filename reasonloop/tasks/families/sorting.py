"""Sorting a short list by selection: each step grows the sorted prefix by the next smallest.

`sort:5,2,9,1=` -> `1;1,2;1,2,5#1,2,5,9`. Step j lists the j smallest items in order, so it is
checked on its own against the task; the full list is the answer and is not repeated as a step.
The level is the length of the list (2 and up). Options:

- `kind` (default "numbers"): integers 0 .. `max_value` (default 9) or lowercase "letters".
- `distinct` (default True): no repeated items (the level may not exceed the number of values).
- `steps` (default True).
"""

from __future__ import annotations

import random
import re
import string
from typing import Any, ClassVar

from reasonloop.tasks.families.compact import CompactFamily, is_int, read_int, readable_step
from reasonloop.types import Task

_WORD = re.compile(r"[A-Za-z]{1,20}", re.ASCII)
KINDS = ("numbers", "letters")


def _is_item(v: Any) -> bool:
    return is_int(v) or (isinstance(v, str) and _WORD.fullmatch(v) is not None)


def _is_items(v: Any) -> bool:
    """A list of >= 2 ints, or of >= 2 words of ASCII letters (not a mix)."""
    return (
        isinstance(v, list)
        and len(v) >= 2
        and all(map(_is_item, v))
        and len({isinstance(x, str) for x in v}) == 1
    )


class SortingFamily(CompactFamily):
    """`sort:i1,i2,...,ik=` -> the items in ascending order, with k items at level k."""

    name: ClassVar[str] = "sorting"
    levels: ClassVar[tuple[int, ...]] = (2, 3, 4, 5, 6, 7, 8)

    def __init__(
        self,
        *,
        steps: bool = True,
        kind: str = "numbers",
        max_value: int = 9,
        distinct: bool = True,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"sorting: option 'kind' must be one of {KINDS}, got {kind!r}")
        if not is_int(max_value) or not 1 <= max_value <= 10**6:
            raise ValueError(
                f"sorting: option 'max_value' must be an int in 1..1000000, got {max_value!r}"
            )
        if not isinstance(distinct, bool):
            raise ValueError(f"sorting: option 'distinct' must be true or false, got {distinct!r}")
        super().__init__(steps=steps, kind=kind, max_value=max_value, distinct=distinct)
        self.kind, self.max_value, self.distinct = kind, max_value, distinct

    def make(self, rng: random.Random, level: int) -> Task:
        """`level` items drawn from 0 .. max_value or a..z, without repeats when `distinct`."""
        k = self.check_level(level)
        n_values = self.max_value + 1 if self.kind == "numbers" else 26
        if self.distinct and k > n_values:
            raise ValueError(
                f"sorting: level {k} needs {k} distinct items but kind={self.kind!r} "
                f"with max_value={self.max_value} has only {n_values}"
            )
        if self.distinct:
            picks = rng.sample(range(n_values), k)
        else:
            picks = [rng.randrange(n_values) for _ in range(k)]
        items = picks if self.kind == "numbers" else [string.ascii_lowercase[i] for i in picks]
        return self.from_items(items)

    def from_items(self, items: list[int] | list[str]) -> Task:
        """The task sorting `items`: all ints, or all words of ASCII letters (compared as
        strings, so `B` < `a`)."""
        if not _is_items(items):
            raise ValueError(
                f"sorting: items must be a list of >= 2 ints or of >= 2 words of ASCII letters, "
                f"got {items!r}"
            )
        prompt = "sort:" + ",".join(map(str, items)) + "="
        answer = ",".join(map(str, sorted(items)))
        return self.task(prompt, answer, len(items), {"items": list(items)})

    def _sorted(self, task: Task) -> list[int] | list[str]:
        return sorted(self.param(task, "items", "a list of >= 2 ints or words", _is_items))

    def solve(self, task: Task) -> tuple[list[str], str]:
        """The sorted prefixes of length 1 .. k-1, then the sorted list."""
        ordered = [str(v) for v in self._sorted(task)]
        steps = [",".join(ordered[:j]) for j in range(1, len(ordered))]
        return steps, ",".join(ordered)

    def check_step(self, task: Task, step: Any) -> bool | None:
        """Are the step's items the task's smallest ones, in ascending order? None when the step
        is not a comma-separated list of items of the task's kind."""
        text = readable_step(step)
        if not text:
            return None
        ordered = self._sorted(task)
        tokens = [t.strip() for t in text.split(",")]
        if isinstance(ordered[0], str):
            if not all(_WORD.fullmatch(t) for t in tokens):
                return None
            values: list[Any] = tokens
        else:
            values = [read_int(t) for t in tokens]
            if any(v is None for v in values):
                return None
        return values == ordered[: len(values)]
