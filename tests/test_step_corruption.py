"""Corrupted-step negatives (`evaluator/step_corruption.py`) by hand."""

from __future__ import annotations

import random

import pytest

from reasonloop.evaluator.process_reward_model import score_places
from reasonloop.evaluator.step_corruption import corrupt, with_corruptions
from reasonloop.reasoner.format import parse
from reasonloop.tasks.families.addition import AdditionFamily

TEXT = "4+4+0=8;6+9+0=15;9+4+1=14#8541\n"


def test_corrupt_changes_one_digit_of_one_step_and_nothing_else() -> None:
    fam = AdditionFamily(steps=True)
    task = fam.make(random.Random(0), 3)
    assert fam.completion(task) == TEXT  # the trace below is this task's reference
    steps, answer = parse(TEXT)
    seen = set()
    for s in range(200):
        made = corrupt(TEXT, random.Random(s))
        assert made is not None
        text, k = made
        new_steps, new_answer = parse(text)
        assert new_answer == answer and text.endswith("\n")
        assert len(new_steps) == len(steps)
        assert score_places(text) == score_places(TEXT)  # the PRM reads the same places
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(TEXT, text, strict=True)) if a != b]
        assert len(diff) == 1 and diff[0][1].isdigit() and diff[0][2].isdigit()
        assert [i for i, (a, b) in enumerate(zip(steps, new_steps, strict=True)) if a != b] == [k]
        # A single changed digit breaks the column's equation: the step is wrong.
        assert fam.check_step(task, new_steps[k]) is False
        seen.add(k)
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("text", ["42\n", "a+b=c;d#7\n", "#12", "1+2=3;"])
def test_corrupt_needs_a_step_with_a_digit(text: str) -> None:
    assert corrupt(text, random.Random(0)) is None


def test_corrupt_skips_empty_steps_when_counting() -> None:
    # `;;` is an empty step: parse drops it, so the changed step's index must too.
    for s in range(50):
        text, k = corrupt("ab;;;1+1=2;x#2", random.Random(s))  # type: ignore[misc]
        assert k == 1 and parse(text)[0][1] != "1+1=2"


def test_with_corruptions_labels_the_changed_step_and_the_rest_bad() -> None:
    prompts = ["p0", "p1", "p2"]
    texts = [TEXT, "1+2+0=3#3\n", "1+2+0=4;1+1+0=2#42\n"]
    labels = [[1.0, 1.0, 1.0, 1.0], [0.75, 1.0], [0.0, 0.0, 0.0]]
    ps, cs, ys, added = with_corruptions(prompts, texts, labels, 1.0, random.Random(0))
    # The third trace is already faulted by its labels: only the first two get copies.
    assert added == 2 and ps == [*prompts, "p0", "p1"]
    assert cs[:3] == texts and ys[:3] == labels
    for copy, y, original, orig_y in zip(cs[3:], ys[3:], texts[:2], labels[:2], strict=True):
        before, after = parse(original)[0], parse(copy)[0]
        (k,) = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert y == orig_y[:k] + [0.0] * (len(orig_y) - k)
    none = with_corruptions(prompts, texts, labels, 0.0, random.Random(0))
    assert none == (prompts, texts, labels, 0)
    # `good` sets what counts as an all-good trace: 0.75 is not good at 0.8.
    _, _, _, strict_added = with_corruptions(prompts, texts, labels, 1.0, random.Random(0), 0.8)
    assert strict_added == 1


def test_with_corruptions_share_is_a_share() -> None:
    texts = [TEXT] * 1000
    _, _, _, added = with_corruptions(
        ["p"] * 1000, texts, [[1.0] * 4] * 1000, 0.3, random.Random(0)
    )
    assert 240 < added < 360


def test_with_corruptions_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\], got 1.5"):
        with_corruptions(["p"], [TEXT], [[1.0] * 4], 1.5, random.Random(0))
    with pytest.raises(ValueError, match="2 prompts, 1 completions, 1 label lists"):
        with_corruptions(["p", "q"], [TEXT], [[1.0] * 4], 0.5, random.Random(0))


def test_only_the_leading_good_steps_are_changed() -> None:
    # Steps 0-1 good, step 2 the first bad one: a copy changes step 0 or 1, never 2.
    changed = set()
    for s in range(100):
        _, cs, ys, added = with_corruptions(
            ["p"], [TEXT], [[1.0, 1.0, 0.0, 0.0]], 1.0, random.Random(s)
        )
        assert added == 1
        before, after = parse(TEXT)[0], parse(cs[1])[0]
        (k,) = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert ys[1] == [1.0] * k + [0.0] * (4 - k)
        changed.add(k)
    assert changed == {0, 1}
    assert corrupt(TEXT, random.Random(0), 0) is None
    assert all(corrupt(TEXT, random.Random(s), 1)[1] == 0 for s in range(20))  # type: ignore[index]
