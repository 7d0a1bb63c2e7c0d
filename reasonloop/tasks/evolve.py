"""Task evolution operators (Evol-Instruct style) for the built-in procedural families.

An operator takes a task and returns a new one made from it: `change_numbers` (same structure,
fresh operands), `add_term` (one more term, digit, item or reasoning step: complexity up),
`structured_input` (the same task written as a list / table) and `rephrase` (a few short prompt
templates per family). Every evolved task is rebuilt from its parameters by the family itself,
so its gold answer is re-derived, never copied, and the family's `reference` and `verify` work
on it unchanged (they read `params`, not the prompt). Lineage: `parents=[source id]`,
`made_by="evolve:<operator>"`, `round`.

An operator that cannot apply (a family it does not know, a task already at its limit) returns
`Evolved(None, reason)`. Operators draw only from the `rng` they are given, so a seed fixes them.
"""

from __future__ import annotations

import dataclasses
import random
import string
from collections.abc import Callable, Sequence
from typing import NamedTuple

from reasonloop.tasks.base import Family
from reasonloop.tasks.families.addition import MAX_LEVEL as ADDITION_MAX
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.tasks.families.chain_sum import ChainSumFamily
from reasonloop.tasks.families.linear_equation import LinearEquationFamily
from reasonloop.tasks.families.multiplication import MultiplicationFamily
from reasonloop.tasks.families.sorting import SortingFamily
from reasonloop.types import Task, stable_id


class Evolved(NamedTuple):
    """The evolved task, or None and why the operator could not apply."""

    task: Task | None
    reason: str = ""


Operator = Callable[[Family, Task, random.Random, int], Evolved]

# Short on purpose: the tiny model's context is 64 characters. `{core}` is the family's own
# prompt without its final `=` / `:` (and sorting's `sort:`), so the end marker the model keys
# on stays the same.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "addition": ("add {core}", "sum:{core}", "{core} ?"),
    "chain_sum": ("add {core}", "total:{core}", "{core} ?"),
    "multiplication": ("mul {core}", "product:{core}", "{core} ?"),
    "linear_equation": ("solve {core}", "x?{core}", "find x:{core}"),
    "sorting": ("order:{core}", "asc:{core}", "sort {core} up"),
}


_EVOLVABLE = (
    AdditionFamily,
    ChainSumFamily,
    MultiplicationFamily,
    LinearEquationFamily,
    SortingFamily,
)


def _rebuild(family: Family, params: dict) -> Task:
    """The family's canonical task for `params`: prompt, answer and level derived afresh."""
    if isinstance(family, AdditionFamily):
        return family.from_operands(params["a"], params["b"], params["digits"])
    if isinstance(family, ChainSumFamily):
        return family.from_terms(list(params["terms"]))
    if isinstance(family, MultiplicationFamily):
        return family.from_operands(params["a"], params["m"])
    if isinstance(family, LinearEquationFamily):
        return family.from_coefficients(params["a"], params["b"], params["c"], params["d"])
    if isinstance(family, SortingFamily):
        return family.from_items(list(params["items"]))
    raise TypeError(f"no evolution for family {family.name!r}")


def _known(family: Family) -> str | None:
    """None when the operators know `family`, else why not."""
    if family.name in TEMPLATES and isinstance(family, _EVOLVABLE):
        return None
    return f"family {family.name!r} has no evolvable parameters (only the built-in families do)"


def _finish(
    family: Family, source: Task, new: Task, op: str, rnd: int, prompt: str | None = None
) -> Evolved:
    """`new` (rebuilt by the family) with lineage, and with `prompt` in place of its own."""
    if prompt is not None:
        new = dataclasses.replace(new, prompt=prompt, id=stable_id(family.name, prompt))
    if new.prompt == source.prompt:
        return Evolved(None, f"{op}: gave the source task back unchanged")
    return Evolved(
        dataclasses.replace(
            new, parents=[source.id], made_by=f"evolve:{op}", round=rnd, split=source.split
        )
    )


def change_numbers(family: Family, task: Task, rng: random.Random, rnd: int = 0) -> Evolved:
    """A fresh task of the same shape (level, and for equations the same form) and new numbers."""
    if why := _known(family):
        return Evolved(None, why)
    for _ in range(20):  # a tiny level (1-digit addition) can redraw the same numbers
        new = family.make(rng, task.difficulty)
        if new.prompt != _rebuild(family, task.params).prompt:
            return _finish(family, task, new, "change_numbers", rnd)
    return Evolved(None, "change_numbers: the level holds no other task")


def add_term(family: Family, task: Task, rng: random.Random, rnd: int = 0) -> Evolved:
    """One more term (chain_sum), digit (addition, multiplication), item (sorting) or
    reasoning step (linear_equation): the task one level, or one step, harder."""
    if why := _known(family):
        return Evolved(None, why)
    p = dict(task.params)
    if isinstance(family, AdditionFamily):
        level = p["digits"] + 1
        if level > ADDITION_MAX:
            return Evolved(None, f"add_term: addition tops out at {ADDITION_MAX} digits")
        # A new leading digit on each operand keeps the old columns as the low ones.
        a = p["a"] + rng.randint(1, 9) * 10 ** p["digits"]
        b = p["b"] + rng.randint(1, 9) * 10 ** p["digits"]
        new = family.from_operands(a, b, level)
    elif isinstance(family, ChainSumFamily):
        term = rng.randint(0, 10**family.digits - 1)
        negative = family.negative_from is not None and len(p["terms"]) + 1 >= family.negative_from
        if negative and rng.random() < 0.5:
            term = -term
        new = family.from_terms([*p["terms"], term])
    elif isinstance(family, MultiplicationFamily):
        a = p["a"] + rng.randint(1, 9) * 10 ** len(str(p["a"]))
        new = family.from_operands(a, p["m"])
    elif isinstance(family, SortingFamily):
        items = list(p["items"])
        if family.kind == "numbers":
            pool: Sequence = range(family.max_value + 1)
        else:
            pool = string.ascii_lowercase
        free = [v for v in pool if v not in items] if family.distinct else list(pool)
        if not free:
            return Evolved(None, "add_term: no distinct item left to add")
        items.insert(rng.randint(0, len(items)), rng.choice(free))
        new = family.from_items(items)
    else:
        a, b, c, d = p["a"], p["b"], p["c"], p["d"]
        if c == 0:
            # kx on both sides: same solution, and the solver must first take it away.
            k = rng.randint(1, 5)
            new = family.from_coefficients(a + k, b, k, d)
        elif b == 0:
            k = rng.randint(1, 9) * rng.choice((1, -1))
            new = family.from_coefficients(a, k, c, d + k)
        elif a - c == 1:
            # Scale both sides so that a division step is needed.
            k = rng.randint(2, 4)
            new = family.from_coefficients(k * a, k * b, k * c, k * d)
        else:
            return Evolved(None, "add_term: this equation already takes every step")
    return _finish(family, task, new, "add_term", rnd)


add_step = add_term
"""The same operator under the name the design uses for step-based families."""


def _structured(family: Family, base: Task) -> str | None:
    p = base.params
    if isinstance(family, ChainSumFamily):
        return "sum:[" + ",".join(map(str, p["terms"])) + "]="
    if isinstance(family, MultiplicationFamily):
        return f"mul:[{p['a']},{p['m']}]="
    if isinstance(family, LinearEquationFamily):
        # A coefficient table of ax+b=cx+d.
        return f"a,b,c,d={p['a']},{p['b']},{p['c']},{p['d']}:"
    if isinstance(family, AdditionFamily):
        # The operands exactly as the prompt writes them (padding, digit order), as a list.
        a, b = base.prompt[:-1].split("+")
        return f"add:[{a},{b}]="
    return None


def structured_input(family: Family, task: Task, rng: random.Random, rnd: int = 0) -> Evolved:
    """The same task written as a list or a coefficient table. The reference trace and the
    verifier read the task's parameters, so both still hold; sorting is skipped (its prompt is
    already a list)."""
    if why := _known(family):
        return Evolved(None, why)
    base = _rebuild(family, task.params)
    prompt = _structured(family, base)
    if prompt is None:
        return Evolved(None, f"structured_input: {family.name} prompts are already a list")
    return _finish(family, task, base, "structured_input", rnd, prompt)


def rephrase(family: Family, task: Task, rng: random.Random, rnd: int = 0) -> Evolved:
    """The same task under another short template (never the one it has now)."""
    if why := _known(family):
        return Evolved(None, why)
    base = _rebuild(family, task.params)
    core, end = base.prompt[:-1], base.prompt[-1]
    core = core.removeprefix("sort:") if isinstance(family, SortingFamily) else core
    prompts = [t.format(core=core) + end for t in TEMPLATES[family.name]]
    choices = [q for q in prompts if q != task.prompt]
    return _finish(family, task, base, "rephrase", rnd, rng.choice(choices))


OPERATORS: dict[str, Operator] = {
    "change_numbers": change_numbers,
    "add_term": add_term,
    "structured_input": structured_input,
    "rephrase": rephrase,
}


def evolve(
    family: Family,
    sources: Sequence[Task],
    n: int,
    operators: Sequence[str],
    rng: random.Random,
    rnd: int = 0,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[Task], dict[str, int]]:
    """Up to `n` distinct evolved tasks, each one operator (drawn from `operators`) applied to a
    source drawn from `sources`; also how many tries each skip reason cost. Ids in `exclude`
    (the held-out set, tasks already proposed) are never returned."""
    unknown = [o for o in operators if o not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown evolve operators {unknown}; known: {sorted(OPERATORS)}")
    out: dict[str, Task] = {}
    skipped: dict[str, int] = {}
    if not sources or not operators:
        return [], skipped
    tries = 0
    while len(out) < n and tries < 5 * n + 20:
        tries += 1
        op = rng.choice(list(operators))
        result = OPERATORS[op](family, rng.choice(list(sources)), rng, rnd)
        if result.task is None:
            key = result.reason.split(":")[0] if ":" in result.reason else result.reason
            skipped[key] = skipped.get(key, 0) + 1
        elif result.task.id not in exclude and result.task.id not in out:
            out[result.task.id] = result.task
    return list(out.values()), skipped
