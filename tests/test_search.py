"""Best-of-N and weighted majority vote by hand, and `search` over a real tiny model's samples."""

from __future__ import annotations

import random

import pytest

from reasonloop.config import ModelConfig
from reasonloop.evaluator.consensus import majority_vote
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.reasoner.search import best_of_n, search, weighted_majority_vote
from reasonloop.tasks.registry import get_family


def test_best_of_n_by_hand() -> None:
    assert best_of_n(["3", "4", "5"], [0.2, 0.9, 0.5]) == ("4", 1)
    # the top-scoring sample has no answer: the best sample that has one wins
    assert best_of_n([None, "4", "5"], [0.99, 0.1, 0.5]) == ("5", 2)
    # ties go to the first
    assert best_of_n(["a", "b", "c"], [0.7, 0.7, 0.1]) == ("a", 0)
    # any scale works, negatives included (log-probs)
    assert best_of_n(["a", "b"], [-3.0, -1.0]) == ("b", 1)
    assert best_of_n([None, None], [0.5, 0.5]) == (None, -1)
    assert best_of_n([], []) == (None, -1)
    with pytest.raises(ValueError):
        best_of_n(["a"], [0.1, 0.2])
    with pytest.raises(ValueError):
        best_of_n(["a", "b"], [float("nan"), 0.2])


def test_weighted_majority_by_hand() -> None:
    # plain majority says "7" (3 votes), the weights say "8": 0.9 + 0.8 = 1.7 > 3 * 0.1
    answers = ["7", "7", "7", "8", "8"]
    scores = [0.1, 0.1, 0.1, 0.9, 0.8]
    assert majority_vote(answers)[0] == "7"
    winner, share = weighted_majority_vote(answers, scores)
    assert winner == "8" and share == pytest.approx(1.7 / 2.0)
    # missing answers add weight to the total but vote for nobody
    winner, share = weighted_majority_vote([None, "1", "2"], [2.0, 1.0, 0.5])
    assert winner == "1" and share == pytest.approx(1.0 / 3.5)
    # ties go to the answer seen first
    assert weighted_majority_vote(["x", "y", "y"], [1.0, 0.5, 0.5])[0] == "x"
    assert weighted_majority_vote(["x", "y"], [0.0, 0.0]) == ("x", 0.0)
    assert weighted_majority_vote([None], [0.3]) == (None, 0.0)
    with pytest.raises(ValueError):
        weighted_majority_vote(["a"], [-0.1])


def test_equal_weights_are_plain_majority_vote() -> None:
    rng = random.Random(0)
    for _ in range(200):
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(rng.randint(1, 9))]
        assert weighted_majority_vote(answers, [0.5] * len(answers)) == majority_vote(answers)


def test_search_scores_each_sample_against_its_own_prompt_and_selects() -> None:
    """An untrained tiny model samples noise, which is enough to check the plumbing: every score
    is the scorer's value for that task's prompt and that sample, the selections follow the pure
    rules, and a constant scorer makes the weighted vote plain majority vote."""
    family = get_family("addition")
    rng = random.Random(0)
    tasks = [family.make(rng, 1) for _ in range(12)]
    model = TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64), 0)

    def keyed(prompt: str, completion: str) -> float:
        return (len(prompt) * 31 + sum(map(ord, prompt + completion))) % 97 / 97

    def scorer(prompts: list[str], completions: list[str]) -> list[float]:
        return [keyed(p, c) for p, c in zip(prompts, completions, strict=True)]

    sampling = Sampling(temperature=1.0, max_new_tokens=12, seed=3)
    found = search(model, family, tasks, 8, sampling, scorer)
    assert len(found) == len(tasks)
    for t, f in zip(tasks, found, strict=True):
        assert len(f.answers) == len(f.scores) == len(f.texts) == 8
        assert f.scores == [keyed(t.prompt, x) for x in f.texts]
        assert f.answers == [family.parse(x)[1] for x in f.texts]
        assert f.best_of_n == best_of_n(f.answers, f.scores)[0]
        assert f.weighted_majority == weighted_majority_vote(f.answers, f.scores)[0]
    assert len({f.best_of_n for f in found}) > 1  # not a degenerate selection

    flat = search(model, family, tasks, 8, sampling, lambda p, c: [1.0] * len(p))
    for f in flat:
        assert f.weighted_majority == majority_vote(f.answers)[0]
    # same seed, same samples: the scorer only changes the selection
    assert [f.texts for f in flat] == [f.texts for f in found]
