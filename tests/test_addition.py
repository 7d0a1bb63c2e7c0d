"""AdditionFamily: references verify, steps check, wrong answers fail, garbage never raises."""

from __future__ import annotations

import itertools
import random

import pytest

from reasonloop.reasoner.format import parse
from reasonloop.tasks.families.addition import AdditionFamily

FORMATS = [
    dict(reverse=r, pad=p, steps=s, reverse_operands=o, pad_carry=c)
    for r, p, s, o, c in itertools.product([True, False], repeat=5)
]


def _sum_of(family: AdditionFamily, answer: str) -> int:
    return int(answer[::-1] if family.reverse else answer)


@pytest.mark.parametrize("options", FORMATS)
def test_reference_verifies_and_is_the_sum(options: dict) -> None:
    family = AdditionFamily(**options)
    rng = random.Random(1)
    for level in (1, 2, 5, 12, 20):
        for _ in range(20):
            task = family.make(rng, level)
            a, b = task.params["a"], task.params["b"]
            assert len(str(a)) == level and len(str(b)) == level
            steps, answer = parse(family.completion(task))
            assert family.completion(task).endswith("\n")
            assert family.verify(task, answer) == 1.0
            assert _sum_of(family, answer) == a + b
            assert all(family.check_step(task, s) for s in steps)
            assert len(steps) == (level if family.steps else 0)


def test_padded_reversed_example() -> None:
    family = AdditionFamily(reverse_operands=False)
    task = family.from_operands(58, 123, 3)
    assert task.prompt == "058+123=" and task.answer == "1810"
    assert family.answer(181, 3) == "1810"
    assert AdditionFamily(pad=False).answer(181, 3) == "181"
    assert AdditionFamily(reverse=False).answer(181, 3) == "0181"
    assert AdditionFamily().prompt(58, 123, 3) == "850+321="
    # pad_carry: operands as wide as the answer, so the carry digit has a column too.
    assert AdditionFamily(pad_carry=True).prompt(58, 123, 3) == "8500+3210="
    assert AdditionFamily(pad_carry=True).from_operands(58, 123, 3).answer == "1810"
    steps, answer = AdditionFamily(steps=True, reverse_operands=False).reference(task)
    assert steps == ["8+3+0=11", "5+2+1=8", "0+1+0=1"] and answer == "1810"


def test_wrong_answers_and_steps_fail() -> None:
    family = AdditionFamily(steps=True)
    rng = random.Random(2)
    for _ in range(50):
        task = family.make(rng, rng.randint(2, 8))
        good = task.answer
        digit = rng.randrange(len(good))
        bad = good[:digit] + str((int(good[digit]) + 1) % 10) + good[digit + 1 :]
        assert family.verify(task, bad) == 0.0
        assert family.verify(task, good + "0") == 0.0
        assert family.verify(task, good[:-1]) == 0.0
        steps, _ = family.reference(task)
        x, y, c, t = (int(v) for v in steps[0].replace("+", " ").replace("=", " ").split())
        assert family.check_step(task, f"{x}+{y}+{c}={t + 1}") is False
        assert family.check_step(task, "not a step") is False
    # A step names no column, so a wrong carry is caught only when no other column matches it.
    task = family.from_operands(58, 123, 3)
    assert family.check_step(task, "8+3+0=11") is True
    assert family.check_step(task, "8+3+1=12") is False
    assert family.check_step(task, "5+2+0=7") is False
    assert family.check_step(task, "9+9+0=18") is False


@pytest.mark.parametrize("options", FORMATS)
def test_garbage_never_raises(options: dict) -> None:
    family = AdditionFamily(**options)
    task = family.make(random.Random(3), 4)
    rng = random.Random(4)
    junk: list[object] = [None, "", " ", "\n", "#", ";;#", "-1", "1e3", 12, 3.5, [], b"12", "١٢٣"]
    junk += [
        "".join(rng.choice("0123456789+=;#\n x") for _ in range(rng.randint(0, 40)))
        for _ in range(200)
    ]
    for item in junk:
        assert family.verify(task, item) in (0.0, 1.0)
        assert family.check_step(task, item) in (True, False)
    broken = family.make(random.Random(3), 4)
    broken.params = {"a": "x"}
    assert family.check_step(broken, "1+2+0=3") is None
    broken.answer = None
    assert family.verify(broken, "1") == 0.0


def test_deterministic_per_seed_and_distinct_across_seeds() -> None:
    family = AdditionFamily()
    first = [family.make(random.Random(7), level) for level in (1, 3, 9)]
    again = [family.make(random.Random(7), level) for level in (1, 3, 9)]
    assert [t.to_row() for t in first] == [t.to_row() for t in again]
    rng_a, rng_b = random.Random(7), random.Random(8)
    assert [family.make(rng_a, 9).prompt for _ in range(5)] != [
        family.make(rng_b, 9).prompt for _ in range(5)
    ]


def test_bad_options_and_levels_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="reverse"):
        AdditionFamily(reverse="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        AdditionFamily().make(random.Random(0), 0)
    with pytest.raises(ValueError, match="level"):
        AdditionFamily().make(random.Random(0), 21)
    with pytest.raises(ValueError, match="operands"):
        AdditionFamily().from_operands(1000, 1, 3)
