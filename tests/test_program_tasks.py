"""Program tasks: gold answers come from the sandbox (batched), match Python's semantics, and
programs that fail or are unsafe are rejected with the sandbox's reason."""

from __future__ import annotations

import random

import pytest

from reasonloop.tasks import programs
from reasonloop.tasks.families.program import ProgramFamily
from reasonloop.tasks.registry import get_family


def test_sandbox_answers_match_python_semantics_in_one_batch():
    # Expected values worked out by hand: floor division and modulo round towards -inf, ** is
    # right-associative and binds tighter than unary minus.
    cases = {
        "3+4*2": "11",
        "(3+4)*2": "14",
        "7-10": "-3",
        "-7//2": "-4",
        "-7%3": "2",
        "2**3**2": "512",
        "-2**2": "-4",
        "12+7*3": "33",
    }
    results = programs.run_programs(list(cases))
    assert [r.status for r in results] == ["ok"] * len(cases)
    assert [r.value for r in results] == list(cases.values())


def test_failing_and_unsafe_programs_get_the_sandboxs_reason_and_the_rest_still_run():
    progs = ["1+1", "9**9**9", "2*3", "1//0", "__import__('os')", "10**12", "5-8", "1.5+1"]
    results = programs.run_programs(progs)
    reasons = [programs.gold_answer(r) for r in results]
    assert reasons[0] == ("2", "")
    assert reasons[1] == (None, "sandbox_timeout")  # killed the batch's process: its own verdict
    assert reasons[2] == ("6", "")  # ran in the next process
    assert reasons[3] == (None, "sandbox_error") and "ZeroDivisionError" in results[3].message
    assert reasons[4] == (None, "invalid_program")  # never reaches the sandbox
    assert reasons[5] == (None, "too_large")
    assert reasons[6] == ("-3", "")
    assert reasons[7] == (None, "invalid_program")


def test_check_program_names_the_problem():
    assert programs.check_program("1+2") is None
    assert "empty" in programs.check_program("  ")
    assert "characters" in programs.check_program("import os")
    assert "longer" in programs.check_program("1+" * 30 + "1")
    assert programs.check_program("1+(2") == "not a Python expression"
    assert programs.check_program(None) == "not text (NoneType)"


def test_family_tasks_have_sandbox_gold_matching_their_steps():
    fam = ProgramFamily()
    tasks = fam.make_batch(random.Random(1), [1, 2, 3, 4])
    assert len(tasks) == 4
    for t, level in zip(tasks, [1, 2, 3, 4], strict=True):
        assert t.params["gold"] == "sandbox" and t.difficulty == level == t.params["ops"]
        steps, answer = fam.reference(t)
        assert answer == t.answer and len(steps) == level
        assert all(fam.check_step(t, s) for s in steps)
        assert fam.verify(t, t.answer) == 1.0 and fam.verify(t, str(int(t.answer) + 1)) == 0.0
    # a false step is caught, a malformed one is unreadable
    assert fam.check_step(tasks[0], "2*3=7") is False
    assert fam.check_step(tasks[0], "two") is None


def test_hand_built_program_trace():
    fam = ProgramFamily()
    t = fam.from_program("12+7*3", "33")
    assert t.prompt == "12+7*3=" and t.difficulty == 2
    assert fam.completion(t) == "7*3=21;12+21=33#33\n"


def test_default_make_is_checked_again_by_the_sandbox():
    fam = get_family("program", digits=1)
    rng = random.Random(0)
    made = [fam.make(rng, 3) for _ in range(5)]
    assert all(t.params["gold"] == "reference" for t in made)
    sandboxed = programs.run_programs([t.params["program"] for t in made])
    assert [r.value for r in sandboxed] == [t.answer for t in made]


def test_bad_family_options_name_the_option():
    with pytest.raises(ValueError, match="'digits'"):
        get_family("program", digits=9)
    with pytest.raises(ValueError, match="'sandbox_gold'"):
        get_family("program", sandbox_gold="yes")
