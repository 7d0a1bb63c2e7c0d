"""What step-level search is built on: a proposer of next steps and a step scorer.

Beam search (`beam_search.py`) and MCTS (`mcts.py`) only ever call two plain functions, so the
search logic runs the same on a real model and on a toy environment in a test:

- a `Propose`: (contexts, m) -> m sampled continuations per context, each one step long (it ends
  right after a ";" of the compact format `step;step#answer`) or the final step and answer (it
  ends at the newline). `step_proposer` makes one from a model with `Sampling.stop_at_step`.
- a `StepScorer`: (prompts, partial or full completions) -> scores per step of each completion
  (a process reward model's `step_scores`; `check_step_scorer`, the family's own step check; or
  `outcome_as_step_scorer`, an outcome scorer such as the ORM read as the value of a prefix).
  `aggregate` (the PRM's own, `evaluator/process_reward_model.py`) turns one completion's step
  scores into one number: min, mean, last or product (0.0 for no score).

A completion is finished when it does not end with ";" (it stopped at the newline, eos or the
token limit); a finished completion with no "#" has no answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from reasonloop.models.base import Completion, LanguageModel, Sampling
from reasonloop.models.rollouts import Rollouts, as_rollouts, derive_seed
from reasonloop.reasoner.format import ANSWER_MARK, STEP_SEP
from reasonloop.reasoner.search import Scorer
from reasonloop.tasks.base import Family
from reasonloop.types import Task

Propose = Callable[[list[str], int], list[list[Completion]]]
"""(contexts = prompt + partial completion, m) -> m continuations of each, one step long."""
StepScorer = Callable[[list[str], list[str]], list[list[float]]]
"""(prompts, partial or full completions) -> one score per step of each, higher is better."""


def is_finished(completion: str) -> bool:
    """A partial completion ends with the step separator; anything else has stopped for good."""
    return not completion.endswith(STEP_SEP)


def split_steps(completion: str) -> tuple[list[str], str | None]:
    """(steps, answer) of a partial or full completion: "a;b;" -> (["a", "b"], None),
    "a;b#7" -> (["a", "b"], "7"). Unlike `format.parse`, a partial trace's text is not taken
    for an answer; a finished one without "#" is all answer, as `format.parse` reads it."""
    text = completion.split("\n", 1)[0]
    if ANSWER_MARK in text:
        body, _, answer = text.rpartition(ANSWER_MARK)
        return [s for s in body.split(STEP_SEP) if s], (answer.strip() or None)
    if text.endswith(STEP_SEP):
        return [s for s in text.split(STEP_SEP) if s], None
    return [], (text.strip() or None)


def check_step_scorer(family: Family, tasks: Sequence[Task]) -> StepScorer:
    """The family's own step verifier as a step scorer (an oracle: it knows the operands).

    1.0 for a step `check_step` accepts, else 0.0; a finished completion's last score also needs
    its answer right (`verify`), as a process reward model scores the final step together with
    the answer it states. A completion with no step but a final answer gets [verify]."""
    check = getattr(family, "check_step", None)
    if check is None:
        raise ValueError(f"family {family.name!r} has no check_step to score steps with")
    by_prompt = {t.prompt: t for t in tasks}

    def score(prompts: list[str], completions: list[str]) -> list[list[float]]:
        out = []
        for p, c in zip(prompts, completions, strict=True):
            task = by_prompt.get(p)
            if task is None:
                raise ValueError(f"check_step_scorer: no task with prompt {p!r}")
            steps, answer = split_steps(c)
            scores = [1.0 if check(task, s) else 0.0 for s in steps]
            if is_finished(c):
                right = 1.0 if family.verify(task, answer) == 1.0 else 0.0
                if scores:
                    scores[-1] = min(scores[-1], right)
                else:
                    scores = [right]
            out.append(scores)
        return out

    return score


def outcome_as_step_scorer(scorer: Scorer) -> StepScorer:
    """An outcome scorer (the ORM's `score`) read as the value of a prefix: one score each, for
    the completion so far (an ORM trained on full traces is then asked out of its training
    distribution on partial ones; it still ranks prefixes, which is all a search needs)."""

    def score(prompts: list[str], completions: list[str]) -> list[list[float]]:
        return [[float(s)] for s in scorer(prompts, completions)] if completions else []

    return score


def step_proposer(
    model: LanguageModel | Rollouts, sampling: Sampling, batch_size: int = 512
) -> Propose:
    """Sample one step per continuation (`Sampling.stop_at_step`), batched over every context.
    Call i samples with a seed derived from `sampling.seed` and i, so a seeded search is
    reproducible and no two calls repeat each other's draws."""
    gen = as_rollouts(model)
    calls = 0

    def propose(contexts: list[str], m: int) -> list[list[Completion]]:
        nonlocal calls
        s = replace(sampling, stop_at_step=True, seed=derive_seed(sampling.seed, calls))
        calls += 1
        return gen.generate(contexts, m, s, batch_size) if contexts else []

    return propose


def completer(
    model: LanguageModel | Rollouts, sampling: Sampling, batch_size: int = 512
) -> Propose:
    """Like `step_proposer`, but each continuation runs to the end of the solution (rollouts)."""
    gen = as_rollouts(model)
    calls = 0

    def complete(contexts: list[str], m: int) -> list[list[Completion]]:
        nonlocal calls
        s = replace(sampling, stop_at_step=False, seed=derive_seed(sampling.seed, calls))
        calls += 1
        return gen.generate(contexts, m, s, batch_size) if contexts else []

    return complete
