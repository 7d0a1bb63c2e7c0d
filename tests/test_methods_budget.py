"""benchmarks/methods.py reads every method's curve at the same training time: a method whose
rounds cost more must not be credited with a round that ran past the budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from methods import at_budget  # noqa: E402


def test_the_round_that_crosses_the_budget_counts_only_up_to_the_budget():
    # Rounds end at 40, 80, 120 and 160 s; the budget of 150 s falls three quarters of the way
    # through the fourth round: 0.70 + 0.75 * (0.90 - 0.70).
    curve = {"seconds": [0.0, 40.0, 80.0, 120.0, 160.0], "pass@1": [0.5, 0.6, 0.65, 0.7, 0.9]}
    assert at_budget(curve, 150.0) == pytest.approx(0.85)


def test_a_round_ending_on_the_budget_counts_whole():
    curve = {"seconds": [0.0, 50.0, 100.0, 150.0], "pass@1": [0.5, 0.6, 0.7, 0.8]}
    assert at_budget(curve, 150.0) == pytest.approx(0.8)


def test_equal_curves_with_different_round_costs_read_the_same_at_the_budget():
    # The same learning per second, in rounds of 30 s and of 45 s.
    fast = {
        "seconds": [0.0, 30.0, 60.0, 90.0, 120.0, 150.0],
        "pass@1": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
    }
    slow = {"seconds": [0.0, 45.0, 90.0, 135.0, 180.0], "pass@1": [0.0, 0.15, 0.3, 0.45, 0.6]}
    assert at_budget(fast, 150.0) == pytest.approx(at_budget(slow, 150.0))


def test_a_run_that_stopped_short_of_the_budget_keeps_its_last_round():
    curve = {"seconds": [0.0, 40.0, 80.0], "pass@1": [0.5, 0.6, 0.55]}
    assert at_budget(curve, 150.0) == pytest.approx(0.55)
    assert at_budget({"seconds": [0.0], "pass@1": [0.4]}, 150.0) == pytest.approx(0.4)
