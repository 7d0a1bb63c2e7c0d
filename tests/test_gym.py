"""reasoning-gym adapter: seeded tasks per curriculum level, scoring with the dataset's scorer."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from reasonloop.tasks import gym
from reasonloop.tasks.gym import GymFamily
from reasonloop.types import Task


def _stored(task: Task) -> Task:
    """The task as it comes back from a Parquet row (params through JSON)."""
    return Task.from_row(json.loads(json.dumps(task.to_row())))


@pytest.mark.parametrize("dataset", ["basic_arithmetic", "chain_sum", "countdown", "gsm_symbolic"])
def test_gold_answers_score_one_after_storage(dataset):
    fam = GymFamily(dataset)
    assert fam.name == f"gym:{dataset}"
    rng = random.Random(0)
    for level in fam.levels:
        task = _stored(fam.make(rng, level))
        assert task.family == fam.name and task.difficulty == level
        assert task.params["dataset"] == dataset and task.answer
        assert fam.reference(task) == ([], task.answer)
        assert fam.verify(task, task.answer) == 1.0
        assert fam.verify(task, "not an answer") < 1.0
        assert fam.verify(task, None) == 0.0


def test_make_is_seeded():
    fam = GymFamily("chain_sum")
    a = [fam.make(random.Random(7), 3).prompt for _ in range(2)]
    rng = random.Random(7)
    b = [fam.make(rng, 3).prompt for _ in range(20)]
    assert a[0] == a[1] == b[0]
    assert len(set(b)) > 15  # distinct draws from one rng


def test_levels_follow_the_curriculum():
    fam = GymFamily("chain_sum")
    assert len(fam.levels) > 3 and fam.levels == tuple(sorted(fam.levels))
    rng = random.Random(1)
    terms = {
        lv: [fam.make(rng, lv).params["metadata"]["num_terms"] for _ in range(30)] for lv in (0, 3)
    }
    assert set(terms[0]) == {2}  # level 0: the easiest curriculum setting only
    assert max(terms[3]) > 2  # inclusive mode: up to level 3's setting
    disjoint = GymFamily("chain_sum", curriculum_mode="upper_bound")
    assert {disjoint.make(rng, 3).params["metadata"]["num_terms"] for _ in range(30)} == {5}


def test_options_override_the_curriculum():
    fam = GymFamily("chain_sum", min_terms=3, max_terms=3, seed=5)
    rng = random.Random(2)
    for level in fam.levels:
        assert fam.make(rng, level).params["metadata"]["num_terms"] == 3
    # when the options fix every curriculum field, levels that would repeat level 0 are dropped
    flat = GymFamily("chain_sum", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    assert flat.levels == (0,)
    # another dataset seed gives other tasks from the same rng
    other = GymFamily("chain_sum", min_terms=3, max_terms=3, seed=6)
    assert fam.make(random.Random(3), 1).prompt != other.make(random.Random(3), 1).prompt


def test_dataset_without_curriculum_has_one_level():
    fam = GymFamily("gsm_symbolic")
    assert fam.levels == (0,)
    with pytest.raises(ValueError, match=r"level must be in \[0\], got 1"):
        fam.make(random.Random(0), 1)


def test_partial_credit_trap_is_passed_through():
    # the default scorer rewards a longer answer that contains the gold one
    fam = GymFamily("chain_sum")
    task = Task(
        id="t",
        family=fam.name,
        prompt="What is the sum?",
        answer="-14282",
        params={"dataset": "chain_sum", "config": fam.configs[0], "metadata": {}},
    )
    assert fam.verify(task, "-14282") == 1.0
    assert fam.verify(task, "-142820") == pytest.approx(6 / 7)  # not 1.0: filters require 1.0
    real = fam.make(random.Random(0), 2)
    longer = real.answer + "0"
    assert fam.verify(real, longer) == pytest.approx(len(real.answer) / len(longer))


def test_scoring_survives_a_fresh_process_and_json_metadata():
    # rearc's scorer compares tuple grids: the JSON copy of its metadata never matches, so the
    # entry is generated again from its index (the caches are empty in a fresh process)
    fam = GymFamily("rearc")
    task = _stored(fam.make(random.Random(0), fam.levels[0]))
    gym._entries.clear()
    gym._dataset.cache_clear()
    assert fam.verify(task, task.answer) == 1.0


def test_scoring_falls_back_to_stored_metadata():
    fam = GymFamily("countdown")
    task = _stored(fam.make(random.Random(0), 0))
    # an index that no longer gives this prompt (another reasoning-gym version, say)
    moved = replace(task, params={**task.params, "index": task.params["index"] + 1})
    assert fam.verify(moved, task.answer) == 1.0
    assert fam.verify(moved, "1+1") < 1.0


def test_entries_are_cached():
    fam = GymFamily("countdown", seed=123)
    before = len(gym._entries)
    first = fam.make(random.Random(4), 1)
    assert len(gym._entries) == before + 1
    again = fam.make(random.Random(4), 1)
    assert len(gym._entries) == before + 1 and again == first


def test_levels_the_dataset_rejects_are_skipped_with_a_reason():
    # reasoning-gym's caesar_cipher curriculum asks for rotations its config refuses
    fam = GymFamily("caesar_cipher")
    assert fam.invalid and not set(fam.invalid) & set(fam.levels)
    bad = min(fam.invalid)
    with pytest.raises(ValueError, match=rf"level {bad}: config .* rejected: rotation"):
        fam.make(random.Random(0), bad)


def test_unknown_dataset_and_option_errors():
    with pytest.raises(
        ValueError, match=r"unknown reasoning-gym dataset 'basic_arithmetc'.*basic_arithmetic"
    ):
        GymFamily("basic_arithmetc")
    with pytest.raises(ValueError, match=r"unknown option 'max_term'; did you mean max_terms"):
        GymFamily("chain_sum", max_term=3)
    with pytest.raises(ValueError, match=r"options must be JSON values"):
        GymFamily("chain_sum", seed=object())
    with pytest.raises(ValueError, match="lacks params"):
        GymFamily("chain_sum").verify(
            Task(id="x", family="gym:chain_sum", prompt="p", answer="1"), "1"
        )


def test_broken_scorer_warns():
    with pytest.warns(UserWarning, match="any non-empty answer scores 1.0"):
        GymFamily("game_of_life_halting")


def test_generator_failures_are_retried_then_reported():
    # reasoning-gym's letter_jumble cannot generate its upper_bound level 2 (empty randrange)
    fam = GymFamily("letter_jumble", curriculum_mode="upper_bound")
    before = len(gym._entries)
    with pytest.raises(RuntimeError, match=r"generation failed at level 2 for 5 indices in a row"):
        fam.make(random.Random(0), 2)
    assert len(gym._entries) == before + 5  # failures are cached: a later draw fails at once
