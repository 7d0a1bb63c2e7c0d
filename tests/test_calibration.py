"""Calibration metrics against hand-computed values (and sklearn where it is installed)."""

from __future__ import annotations

import itertools
import random

import pytest

from reasonloop.evaluator.calibration import auroc, ece, first_error_accuracy, first_error_chance


def _pairwise_auroc(scores: list[float], labels: list[bool]) -> float:
    """The definition itself: P(score_pos > score_neg) + 0.5 P(tie), over all pairs."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_computed() -> None:
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    # every score tied: no ranking information at all
    assert auroc([0.5] * 4, [True, False, True, False]) == 0.5
    # one tie between a positive and a negative counts half: pairs (0.7>0.2, 0.7=0.7) -> 1.5/2
    assert auroc([0.7, 0.2, 0.7], [True, False, False]) == pytest.approx(0.75)


def test_auroc_one_class_is_none() -> None:
    assert auroc([0.1, 0.2], [True, True]) is None
    assert auroc([0.1, 0.2], [False, False]) is None
    assert auroc([], []) is None
    with pytest.raises(ValueError):
        auroc([0.1], [True, False])


def test_auroc_matches_pairwise_definition_with_ties() -> None:
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 30)
        scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(n)]
        labels = [rng.random() < 0.5 for _ in range(n)]
        if all(labels) or not any(labels):
            continue
        assert auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores, labels))


def test_auroc_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="sklearn not installed")
    rng = random.Random(1)
    scores = [round(rng.random(), 1) for _ in range(200)]  # rounding makes ties
    labels = [rng.random() < s for s in scores]
    assert auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))


def test_ece_hand_computed() -> None:
    # perfectly calibrated bins: p=0.25 right 1 of 4, p=0.75 right 3 of 4
    probs = [0.25] * 4 + [0.75] * 4
    labels = [True, False, False, False, True, True, True, False]
    assert ece(probs, labels) == pytest.approx(0.0)
    # always 0.9 confident, right half the time: |0.9 - 0.5| = 0.4
    assert ece([0.9] * 4, [True, False, True, False]) == pytest.approx(0.4)
    # two bins weighted by size: bin 0.1 (1 sample, wrong): 0.1; bin 0.9 (3, all right): 0.1
    assert ece([0.1, 0.9, 0.9, 0.9], [False, True, True, True]) == pytest.approx(0.1)
    # 1.0 falls in the last bin and is exact there
    assert ece([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    # bins are averaged inside before comparing: 0.92 and 0.98 share a bin, mean 0.95, acc 1
    assert ece([0.92, 0.98], [True, True], bins=10) == pytest.approx(0.05)
    # with one bin, ece is |mean prob - accuracy|
    assert ece([0.2, 0.6], [True, True], bins=1) == pytest.approx(0.6)


def test_ece_refuses_what_is_not_a_probability() -> None:
    assert ece([], []) is None
    with pytest.raises(ValueError):
        ece([1.5], [True])
    with pytest.raises(ValueError):
        ece([float("nan")], [True])
    with pytest.raises(ValueError):
        ece([0.5], [True], bins=0)


def test_first_error_accuracy() -> None:
    assert first_error_accuracy([2, 1, None, 0], [2, 3, None, 0]) == pytest.approx(2 / 3)
    assert first_error_accuracy([None, 1], [None, None]) is None
    assert first_error_accuracy([None], [1]) == 0.0


def test_first_error_chance_is_a_uniform_guess_among_the_steps() -> None:
    assert first_error_chance([4, 2]) == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert first_error_chance([1, 1, 1]) == 1.0  # one step: it must be the wrong one
    assert first_error_chance([0, 2]) == pytest.approx(0.25)  # no steps: never located
    assert first_error_chance([]) is None
