"""Compact families (chain_sum, sum_above, multiplication, linear_equation, sorting) and the
registry.

Every family and level: the reference trace parses back to the gold answer, verifies to 1.0,
and each of its steps passes `check_step`; the gold answer is recomputed here independently
from the prompt; corrupted answers and steps fail; garbage never raises; seeds reproduce.
"""

from __future__ import annotations

import importlib.util
import random
import re
import statistics
import string

import pytest

from reasonloop.reasoner.format import parse, render
from reasonloop.tasks.families.chain_sum import ChainSumFamily
from reasonloop.tasks.families.compact import CompactFamily
from reasonloop.tasks.families.linear_equation import LinearEquationFamily
from reasonloop.tasks.families.multiplication import MultiplicationFamily
from reasonloop.tasks.families.sorting import SortingFamily
from reasonloop.tasks.families.sum_above import SumAboveFamily
from reasonloop.tasks.registry import FAMILIES, families_in, get_family, known_names
from reasonloop.types import Task

VARIANTS: dict[str, CompactFamily] = {
    "chain_sum": ChainSumFamily(),
    "chain_sum-2digit-neg": ChainSumFamily(digits=2, negative_from=3),
    "sum_above": SumAboveFamily(),
    "sum_above-2digit-neg": SumAboveFamily(digits=2, negative_from=3),
    "multiplication": MultiplicationFamily(),
    "multiplication-small": MultiplicationFamily(max_multiplier=3),
    "linear_equation": LinearEquationFamily(),
    "sorting": SortingFamily(),
    "sorting-letters": SortingFamily(kind="letters"),
    "sorting-repeats": SortingFamily(max_value=99, distinct=False),
}
PER_LEVEL = 25
PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")
GARBAGE = [
    None,
    5,
    b"12",
    "",
    " ",
    "\n",
    "#",
    ";",
    "=",
    ",",
    "-",
    "+",
    "x",
    "x=",
    "==",
    "abc",
    "1e999",
    "9" * 5000,
    "-" * 300,
    "\x00",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: int() reads it, a verifier must not
    "\uff11\uff12",  # fullwidth 12
    "1,,2",
    "3x+=2",
    "x=x",
    "7*6=42",
    "3*4+1=13,13",
    "sort:1,2=",
    "1;2#3",
    "\ud800",
]


def _tasks(family: CompactFamily, level: int, seed: int = 0, n: int = PER_LEVEL) -> list[Task]:
    rng = random.Random(seed)
    return [family.make(rng, level) for _ in range(n)]


def _all_tasks(family: CompactFamily) -> list[Task]:
    return [t for level in family.levels for t in _tasks(family, level)]


def _truth(task: Task) -> str:
    """The right answer, computed from the prompt alone (not from the family's code)."""
    p = task.prompt
    if task.family == "chain_sum":
        return str(sum(int(t) for t in re.findall(r"[+-]?\d+", p[:-1])))
    if task.family == "sum_above":
        terms, bound = p[:-1].split(">")
        return "y" if sum(int(t) for t in re.findall(r"[+-]?\d+", terms)) > int(bound) else "n"
    if task.family == "multiplication":
        a, m = p[:-1].split("*")
        return str(int(a) * int(m))
    if task.family == "linear_equation":
        left, right = (re.sub(r"(\d)x", r"\1*x", s) for s in p[:-1].split("="))

        def f(x: int) -> int:  # left minus right: linear in x
            return eval(left, {"x": x}) - eval(right, {"x": x})

        slope = f(1) - f(0)
        assert slope != 0 and f(0) % slope == 0, p
        x = -f(0) // slope
        assert f(x) == 0, p
        return str(x)
    if task.family == "sorting":
        items = p[len("sort:") : -1].split(",")
        key = int if items[0].lstrip("-").isdigit() else str
        return ",".join(sorted(items, key=key))
    raise AssertionError(task.family)


def _bump(ch: str) -> str:
    """Another character of the same class (digit or letter)."""
    if ch.isdigit():
        return str((int(ch) + 1) % 10)
    return "a" if ch == "z" else chr(ord(ch) + 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_parses_verifies_and_checks(variant: str) -> None:
    family = VARIANTS[variant]
    for level in family.levels:
        for task in _tasks(family, level):
            steps, answer = family.reference(task)
            completion = family.completion(task)
            assert completion == render(steps, answer) + "\n"
            assert parse(completion) == (steps, task.answer)
            assert answer == task.answer == _truth(task)
            assert family.verify(task, answer) == 1.0
            assert family.verify(task, f" {answer}\n") == 1.0
            assert steps, "a stepwise family gives at least one step"
            for step in steps:
                assert family.check_step(task, step) is True, (task.prompt, step)
                assert not set(step) & set(";#\n")
            assert task.prompt[-1] in "=:?"
            assert set(task.prompt + completion[:-1]) <= PRINTABLE
            assert task.difficulty == level and task.family == family.name


@pytest.mark.parametrize("variant", VARIANTS)
def test_wrong_answers_and_steps_fail(variant: str) -> None:
    family = VARIANTS[variant]
    for task in _all_tasks(family):
        gold = task.answer
        wrong = [gold[:-1] + _bump(gold[-1]), gold + "0", gold[:-1] or "0", "", gold + "#"]
        if "," in gold:
            wrong.append(",".join(reversed(gold.split(","))))
        for answer in wrong:
            if answer != gold:
                assert family.verify(task, answer) == 0.0, (task.prompt, answer)
        steps, _ = family.reference(task)
        for step in steps:  # the last character is always a digit or a letter of the result
            bad = step[:-1] + _bump(step[-1])
            assert family.check_step(task, bad) is False, (task.prompt, bad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_garbage_never_raises(variant: str) -> None:
    family = VARIANTS[variant]
    for task in _tasks(family, family.levels[-1], n=5):
        for junk in GARBAGE:
            assert family.verify(task, junk) == 0.0
            assert family.check_step(task, junk) in (True, False, None)
        assert family.check_step(task, None) is None
        assert family.check_step(task, "9" * 5000) is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_seed_same_tasks(variant: str) -> None:
    family = VARIANTS[variant]
    twin = type(family)(**family.options)
    level = family.levels[-1]
    first = [(t.id, t.prompt, t.answer, t.params) for t in _tasks(family, level, seed=3)]
    again = [(t.id, t.prompt, t.answer, t.params) for t in _tasks(twin, level, seed=3)]
    other = [(t.id, t.prompt, t.answer, t.params) for t in _tasks(family, level, seed=4)]
    assert first == again
    assert first != other


@pytest.mark.parametrize("variant", VARIANTS)
def test_higher_levels_give_longer_references(variant: str) -> None:
    family = VARIANTS[variant]
    means = [
        statistics.mean(len(family.completion(t)) for t in _tasks(family, lv, n=60))
        for lv in family.levels
    ]
    assert means == sorted(means) and len(set(means)) == len(means), means


@pytest.mark.parametrize("variant", VARIANTS)
def test_without_steps_the_completion_is_the_answer(variant: str) -> None:
    family = VARIANTS[variant]
    bare = type(family)(**{**family.options, "steps": False})
    for task in _tasks(family, family.levels[-1], n=5):
        assert bare.reference(task) == ([], task.answer)
        assert bare.completion(task) == task.answer + "\n"
        assert parse(bare.completion(task)) == ([], task.answer)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tasks_survive_a_parquet_row_round_trip(variant: str) -> None:
    family = VARIANTS[variant]
    for task in _tasks(family, family.levels[-1], n=5):
        back = Task.from_row(task.to_row())
        assert family.reference(back) == family.reference(task)


def test_documented_examples() -> None:
    chain = ChainSumFamily()
    task = chain.from_terms([3, 5, 2, 7])
    assert (task.prompt, chain.completion(task)) == ("3+5+2+7=", "3+5=8;8+2=10;10+7=17#17\n")
    task = chain.from_terms([9, -4, 2])
    assert (task.prompt, chain.completion(task)) == ("9-4+2=", "9-4=5;5+2=7#7\n")
    above = SumAboveFamily()
    task = above.from_terms([3, 5, 2, 7], 16)
    assert (task.prompt, above.completion(task)) == (
        "3+5+2+7>16?",
        "3+5=8;8+2=10;10+7=17;17-16=1#y\n",
    )
    task = above.from_terms([3, 5, 2, 7], 17)
    assert above.completion(task) == "3+5=8;8+2=10;10+7=17;17-17=0#n\n"
    assert above.check_step(task, "10+7=18") is False and above.backward(task, "y") == []
    answers = [above.make(random.Random(i), 4).answer for i in range(400)]
    assert 160 < answers.count("y") < 240  # y and n equally likely, so a guess scores half
    with pytest.raises(ValueError, match="bound must be an int"):
        above.from_terms([1, 2], None)

    mult = MultiplicationFamily()
    task = mult.from_operands(347, 6)
    assert (task.prompt, task.difficulty) == ("347*6=", 3)
    assert mult.completion(task) == "7*6=42,42;4*6+4=28,282;3*6+2=20,2082#2082\n"
    task = mult.from_operands(1005, 2)  # zero digits: partial products keep their zeros
    assert mult.completion(task) == "5*2=10,10;0*2+1=1,10;0*2=0,010;1*2=2,2010#2010\n"

    lin = LinearEquationFamily()
    task = lin.from_coefficients(3, 4, 0, 19)
    assert (task.prompt, lin.completion(task), task.difficulty) == ("3x+4=19:", "3x=15;x=5#5\n", 1)
    task = lin.from_coefficients(5, 3, 2, 12)
    assert (task.prompt, lin.completion(task), task.difficulty) == (
        "5x+3=2x+12:",
        "3x+3=12;3x=9;x=3#3\n",
        4,
    )
    task = lin.from_coefficients(2, 3, 5, -9)
    assert lin.completion(task) == "-3x+3=-9;-3x=-12;x=4#4\n"

    sort = SortingFamily()
    task = sort.from_items([5, 2, 9, 1])
    assert (task.prompt, sort.completion(task)) == ("sort:5,2,9,1=", "1;1,2;1,2,5#1,2,5,9\n")


def test_check_step_accepts_other_true_steps_and_rejects_false_ones() -> None:
    chain = ChainSumFamily().from_terms([3, 5, 2, 7])
    assert ChainSumFamily().check_step(chain, "12-20=-8") is True
    assert ChainSumFamily().check_step(chain, "3+5=9") is False
    lin, fam = LinearEquationFamily().from_coefficients(3, 4, 0, 19), LinearEquationFamily()
    assert fam.check_step(lin, "x+x+x=15") is True  # another sound route
    assert fam.check_step(lin, "6x=30") is True
    assert fam.check_step(lin, "x=6") is False
    assert fam.check_step(lin, "x=5=5") is None
    mult, fam_m = MultiplicationFamily().from_operands(347, 6), MultiplicationFamily()
    assert fam_m.check_step(mult, "4*6+4=28,282") is True
    assert fam_m.check_step(mult, "4*6=24,242") is False  # carry left out
    assert fam_m.check_step(mult, "4*7+4=32,322") is False  # not this task's multiplier
    sort, fam_s = SortingFamily().from_items([5, 2, 9, 1]), SortingFamily()
    assert fam_s.check_step(sort, "1,2,5,9") is True
    assert fam_s.check_step(sort, "2,1") is False
    assert fam_s.check_step(sort, "1,2,5,9,9") is False
    assert fam_s.check_step(sort, "a,b") is None


def test_bad_options_levels_and_params_are_clear_errors() -> None:
    for make in (
        lambda: ChainSumFamily(digits=0),
        lambda: ChainSumFamily(steps="yes"),
        lambda: MultiplicationFamily(max_multiplier=10),
        lambda: SortingFamily(kind="words"),
        lambda: SortingFamily(max_value=0),
    ):
        with pytest.raises(ValueError, match="option"):
            make()
    with pytest.raises(ValueError, match="level must be an int >= 2"):
        ChainSumFamily().make(random.Random(0), 1)
    with pytest.raises(ValueError, match="distinct"):
        SortingFamily(max_value=3).make(random.Random(0), 5)
    with pytest.raises(ValueError, match="integer"):
        LinearEquationFamily().from_coefficients(2, 1, 0, 4)  # x = 3/2
    broken = Task(id="t1", family="chain_sum", prompt="1+2=", answer="3", params={})
    with pytest.raises(ValueError, match=r"t1.*params\['terms'\]"):
        ChainSumFamily().reference(broken)


def test_levels_above_the_standard_range_still_draw() -> None:
    rng = random.Random(0)
    assert len(ChainSumFamily().make(rng, 12).params["terms"]) == 12
    assert MultiplicationFamily().make(rng, 9).difficulty == 9
    assert LinearEquationFamily().make(rng, 7).difficulty == 7


def test_registry_resolves_every_family_with_options() -> None:
    assert {"chain_sum", "multiplication", "linear_equation", "sorting"} <= set(FAMILIES)
    has_addition = importlib.util.find_spec("reasonloop.tasks.families.addition") is not None
    assert ("addition" in FAMILIES) == has_addition
    assert families_in("no_such_family") == []  # a family module not written yet is skipped
    assert families_in("chain_sum") == [ChainSumFamily]
    for name, cls in FAMILIES.items():
        family = get_family(name)
        assert isinstance(family, cls) and family.name == name
    family = get_family("chain_sum", digits=2, steps=False)
    assert (
        family.options["digits"] == 2
        and family.reference(family.make(random.Random(0), 3))[0] == []
    )


def test_registry_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match=r"did you mean 'chain_sum'.*known: .*sorting"):
        get_family("chainsum")
    with pytest.raises(ValueError, match=r"did you mean 'gym:countdown'"):
        get_family("gyms:countdown")
    with pytest.raises(ValueError, match=r"unknown task family 'zzz'; known: .*gym:<dataset>"):
        get_family("zzz")
    with pytest.raises(ValueError, match=r"no option 'digts' \(did you mean 'digits'\?\)"):
        get_family("chain_sum", digts=2)
    for empty in ("gym:", "file:", "", "  "):
        with pytest.raises(ValueError):
            get_family(empty)
    assert known_names()[-2:] == ["gym:<dataset>", "file:<path>"]


def test_registry_file_source(tmp_path) -> None:
    pytest.importorskip("reasonloop.tasks.files")
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    family = get_family(f"file:{path}")
    assert family.name == f"file:{path}"
    task = family.make(random.Random(0), family.levels[0])
    assert task.prompt == "1+1=" and family.verify(task, "2") == 1.0


def test_registry_gym_source() -> None:
    pytest.importorskip("reasoning_gym")
    pytest.importorskip("reasonloop.tasks.gym")
    family = get_family("gym:basic_arithmetic")
    assert family.name == "gym:basic_arithmetic"
    task = family.make(random.Random(0), family.levels[0])
    assert family.verify(task, task.answer) == 1.0
