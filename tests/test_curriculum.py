"""Adaptive curriculum choices on hand-made success tables, and near-duplicate removal."""

from __future__ import annotations

import pytest

from reasonloop.config import ConfigError, CreatorConfig
from reasonloop.report.diversity import char_ngrams, jaccard, near_duplicates
from reasonloop.tasks.curriculum import choose_level, learnability, success_table

LEVELS = [1, 2, 3, 4, 5, 6]
BAND = (0.2, 0.8)


def test_picks_the_most_learnable_level_in_band() -> None:
    table = {1: (10, 10), 2: (7, 10), 3: (5, 10), 4: (1, 10)}
    assert choose_level(LEVELS, table, BAND, fallback=2)[0] == 3
    # p=0.3 and p=0.7 are equally learnable: the harder one wins.
    assert choose_level(LEVELS, {2: (7, 10), 3: (3, 10)}, BAND, 2)[0] == 3
    assert learnability(0.5) == 0.25 and learnability(1.0) == 0.0


def test_band_edges_and_a_narrow_band() -> None:
    table = {2: (2, 10), 3: (9, 10)}
    assert choose_level(LEVELS, table, BAND, 1)[0] == 2  # 0.2 is inside [0.2, 0.8]
    # A narrow band around 1/2 holds neither: L3 is mastered, so go one past it.
    level, why = choose_level(LEVELS, table, (0.4, 0.6), 1)
    assert level == 4 and "mastered" in why


def test_everything_mastered_moves_up_and_stays_at_the_top() -> None:
    assert choose_level(LEVELS, {1: (9, 10), 2: (10, 10)}, BAND, 1)[0] == 3
    level, why = choose_level(LEVELS, {6: (10, 10)}, BAND, 1)
    assert level == 6 and "top" in why


def test_everything_too_hard_steps_down() -> None:
    assert choose_level(LEVELS, {4: (0, 10), 5: (0, 10)}, BAND, 4)[0] == 3
    assert choose_level(LEVELS, {1: (1, 10)}, BAND, 1)[0] == 1


def test_no_measurement_falls_back_and_foreign_levels_are_ignored() -> None:
    level, why = choose_level(LEVELS, {}, BAND, 4)
    assert level == 4 and "no success" in why
    # A level outside the allowed ones (above max_level, say) is not a candidate.
    assert choose_level([1, 2, 3], {5: (5, 10)}, BAND, 2)[0] == 2


def test_success_table_keeps_the_latest_measurement() -> None:
    rounds = [{"2": [1, 10], "3": [0, 10]}, {"3": [6, 10], "4": [0, 0]}]
    assert success_table(rounds) == {2: (1, 10), 3: (6, 10)}


def test_creator_config_checks_band_and_operators() -> None:
    assert CreatorConfig(mode="adaptive", target_band=[0.3, 0.7]).target_band == (0.3, 0.7)
    for bad in ({"target_band": [0.8, 0.2]}, {"evolve": ["nope"]}, {"evolve_share": 0.5}):
        with pytest.raises((ValueError, ConfigError)):
            CreatorConfig(**bad)


def test_near_duplicates_within_and_across_rounds() -> None:
    prompts = ["add 12+34=", "add 12+34= ", "98765+43210=", "7*8="]
    dropped = near_duplicates(prompts, previous=["7*8="], threshold=0.8)
    assert set(dropped) == {1, 3}
    assert "this round" in dropped[1] and "earlier round" in dropped[3]
    # Without the earlier round, and with a stricter threshold, only exact repeats would go.
    assert near_duplicates(prompts, threshold=0.8) == {1: dropped[1]}
    assert near_duplicates(prompts, previous=["7*8="], threshold=0.95).keys() == {3}
    # Exactly the pairwise Jaccard rule: a pair just above the threshold goes, at it stays.
    a, b = "sort:1,2,3,4,5=", "sort:1,2,3,4,6="
    sim = jaccard(char_ngrams(a), char_ngrams(b))
    assert 0 < sim < 1
    assert near_duplicates([a, b], threshold=sim - 0.01).keys() == {1}
    assert near_duplicates([a, b], threshold=sim) == {}


def test_near_duplicates_scale() -> None:
    import time

    prompts = [f"{i:05d}+{(i * 7919) % 100000:05d}=" for i in range(3000)]
    t0 = time.perf_counter()
    dropped = near_duplicates(prompts[1500:], previous=prompts[:1500], threshold=0.9)
    assert dropped == {}
    assert time.perf_counter() - t0 < 10
