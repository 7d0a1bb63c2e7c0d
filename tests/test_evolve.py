"""Task evolution operators: every operator on every built-in family gives a task the family
can solve and verify, with its answer re-derived and its lineage recorded."""

from __future__ import annotations

import dataclasses
import random

import pytest

from reasonloop.reasoner.format import parse
from reasonloop.tasks import evolve
from reasonloop.tasks.registry import get_family
from reasonloop.types import Task

FAMILIES = ["addition", "chain_sum", "multiplication", "linear_equation", "sorting"]
OPS = sorted(evolve.OPERATORS)
# The only (family, operator) pair that is skipped by design.
SKIPPED = {("sorting", "structured_input")}


def _source(name: str, seed: int = 0, level_index: int = 1) -> tuple:
    family = get_family(name, steps=True)  # addition writes no steps unless asked
    return family, family.make(random.Random(seed), family.levels[level_index])


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("op", OPS)
def test_operator_gives_a_verifiable_task_with_lineage(name: str, op: str) -> None:
    family, source = _source(name)
    for seed in range(5):
        result = evolve.OPERATORS[op](family, source, random.Random(seed), 3)
        if (name, op) in SKIPPED:
            assert result.task is None and "already a list" in result.reason
            return
        task = result.task
        assert task is not None, result.reason
        assert task.prompt != source.prompt and task.id != source.id
        assert task.parents == [source.id] and task.made_by == f"evolve:{op}"
        assert task.round == 3 and task.family == family.name
        steps, answer = family.reference(task)
        assert family.verify(task, answer) == 1.0
        # The reference's steps are each true of the evolved task, and its text parses back.
        assert all(family.check_step(task, s) is True for s in steps)
        assert parse(family.completion(task).strip()) == (steps, answer)


@pytest.mark.parametrize("name", FAMILIES)
def test_answer_is_re_derived_not_copied(name: str) -> None:
    family, source = _source(name)
    forged = dataclasses.replace(source, answer="999999")  # a wrong gold answer on the source
    for op in OPS:
        task = evolve.OPERATORS[op](family, forged, random.Random(1), 1).task
        if task is not None:
            assert task.answer != "999999"
            assert task.answer == family.reference(task)[1]


def test_add_term_raises_complexity() -> None:
    for name in FAMILIES:
        family, source = _source(name, level_index=0)
        task = evolve.add_term(family, source, random.Random(0), 1).task
        assert task is not None
        assert len(family.reference(task)[0]) > len(family.reference(source)[0]) or (
            task.difficulty > source.difficulty
        ), name
    eq = get_family("linear_equation")
    src = eq.from_coefficients(3, 4, 0, 19)  # 3x+4=19: two steps
    harder = evolve.add_term(eq, src, random.Random(0), 1).task
    assert harder is not None and harder.answer == "5"
    assert len(eq.solve(harder)[0]) == 3


def test_change_numbers_keeps_the_level() -> None:
    for name in FAMILIES:
        family, source = _source(name)
        task = evolve.change_numbers(family, source, random.Random(2), 1).task
        assert task is not None and task.difficulty == source.difficulty


def test_operators_are_deterministic_for_a_seed() -> None:
    for name in FAMILIES:
        family, source = _source(name)
        a = evolve.evolve(family, [source], 6, OPS, random.Random(7), 2)
        b = evolve.evolve(family, [source], 6, OPS, random.Random(7), 2)
        assert [t.to_row() for t in a[0]] == [t.to_row() for t in b[0]]
        c = evolve.evolve(family, [source], 6, OPS, random.Random(8), 2)
        assert [t.prompt for t in c[0]] != [t.prompt for t in a[0]]


def test_cannot_apply_returns_none_with_reason() -> None:
    add = get_family("addition")
    top = add.from_operands(1, 2, 20)
    result = evolve.add_term(add, top, random.Random(0), 1)
    assert result.task is None and "20 digits" in result.reason
    eq = get_family("linear_equation")
    full = eq.from_coefficients(5, 3, 2, 12)  # every step already needed
    assert evolve.add_term(eq, full, random.Random(0), 1).task is None
    one = get_family("addition").from_operands(3, 4, 1)
    sorting = get_family("sorting", max_value=2)
    full_list = sorting.from_items([0, 1, 2])
    assert "no distinct item" in evolve.add_term(sorting, full_list, random.Random(0), 1).reason
    assert evolve.change_numbers(add, one, random.Random(0), 1).task is not None


def test_unknown_family_is_skipped() -> None:
    class Other(type(get_family("chain_sum"))):
        name = "other"

    fam = Other()
    task = fam.from_terms([1, 2])
    for op in OPS:
        result = evolve.OPERATORS[op](fam, task, random.Random(0), 1)
        assert result.task is None and "no evolvable" in result.reason


def test_evolve_pool_respects_exclude_and_round_trips() -> None:
    family, source = _source("chain_sum")
    first, _ = evolve.evolve(family, [source], 5, ["rephrase"], random.Random(0), 1)
    assert first
    again, _ = evolve.evolve(
        family, [source], 5, ["rephrase"], random.Random(0), 1, exclude={t.id for t in first}
    )
    assert not {t.id for t in again} & {t.id for t in first}
    row = first[0].to_row()
    back = Task.from_row(row)
    assert back.parents == [source.id] and back.made_by == "evolve:rephrase"
    with pytest.raises(ValueError, match="unknown evolve operators"):
        evolve.evolve(family, [source], 1, ["nope"], random.Random(0))
