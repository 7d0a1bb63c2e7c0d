"""Inference-time search with a scorer: best-of-N and weighted majority vote.

The selection rules are pure functions over one task's sampled answers and their scores (any
scorer: a learned reward model's probability, a verifier's score, a log-probability turned into
a weight). `search` is the thin part that samples N per task, parses, scores and selects.

- best-of-N: the answer of the highest-scoring sample (Cobbe et al. 2021; V-STaR).
- weighted majority vote: each distinct answer gets the sum of its samples' scores, the heaviest
  wins (Uesato et al. 2022; Li et al. 2023's weighted voting). With equal scores it is plain
  majority vote; with one confident sample against many doubtful ones it is best-of-N.

Samples without an answer cannot be selected (there is nothing to return), whatever they score.
Ties go to the sample (or answer) seen first, as `consensus.majority_vote` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.models.rollouts import Rollouts, as_rollouts
from reasonloop.tasks.base import Family
from reasonloop.types import Task

Scorer = Callable[[list[str], list[str]], list[float]]
"""(prompts, completions) -> one score per pair, higher is better (`OutcomeRewardModel.score`)."""


def _check(answers: Sequence[str | None], scores: Sequence[float]) -> None:
    if len(answers) != len(scores):
        raise ValueError(f"{len(answers)} answers but {len(scores)} scores")
    for s in scores:
        if math.isnan(s):  # NaN compares false with everything and would pick arbitrarily
            raise ValueError("a score is NaN")


def best_of_n(answers: Sequence[str | None], scores: Sequence[float]) -> tuple[str | None, int]:
    """(answer, index) of the highest-scoring sample that has an answer; (None, -1) if none has."""
    _check(answers, scores)
    best = -1
    for i, (a, s) in enumerate(zip(answers, scores, strict=True)):
        if a is not None and (best < 0 or s > scores[best]):
            best = i
    return (answers[best] if best >= 0 else None), best


def weighted_majority_vote(
    answers: Sequence[str | None], scores: Sequence[float]
) -> tuple[str | None, float]:
    """(answer with the largest summed score, its share of all samples' summed score).

    Scores must be non-negative weights (probabilities). Samples without an answer add their
    weight to the total but vote for nobody, as in `majority_vote`. (None, 0.0) when no sample
    has an answer; when every weight is 0 the share is 0.0 and the tie rule picks the first."""
    _check(answers, scores)
    if any(s < 0 for s in scores):
        raise ValueError("weighted majority vote needs non-negative scores")
    weight: dict[str, float] = {}
    for a, s in zip(answers, scores, strict=True):
        if a is not None:
            weight[a] = weight.get(a, 0.0) + s
    if not weight:
        return None, 0.0
    top = max(weight.values())
    winner = next(a for a in answers if a is not None and weight[a] == top)
    total = sum(scores)
    return winner, (top / total if total > 0 else 0.0)


@dataclass
class Searched:
    """One task's N samples, their scores, and what each rule selects."""

    answers: list[str | None]
    scores: list[float]
    texts: list[str]
    best_of_n: str | None
    weighted_majority: str | None
    tokens: int = 0
    """Tokens generated for the N samples."""


def search(
    model: LanguageModel | Rollouts,
    family: Family,
    tasks: list[Task],
    n: int,
    sampling: Sampling,
    scorer: Scorer,
    batch_size: int = 512,
) -> list[Searched]:
    """Sample `n` completions per task, score each with `scorer`, and select by both rules."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prompts = [t.prompt for t in tasks]
    samples = as_rollouts(model).generate(prompts, n, sampling, batch_size)
    flat_prompts = [p for p, comps in zip(prompts, samples, strict=True) for _ in comps]
    flat_texts = [c.text for comps in samples for c in comps]
    flat_scores = scorer(flat_prompts, flat_texts) if flat_texts else []
    out: list[Searched] = []
    at = 0
    for comps in samples:
        texts = flat_texts[at : at + len(comps)]
        scores = [float(s) for s in flat_scores[at : at + len(comps)]]
        at += len(comps)
        answers = [family.parse(t)[1] for t in texts]
        out.append(
            Searched(
                answers=answers,
                scores=scores,
                texts=texts,
                best_of_n=best_of_n(answers, scores)[0],
                weighted_majority=weighted_majority_vote(answers, scores)[0],
                tokens=sum(c.n_tokens for c in comps),
            )
        )
    return out
