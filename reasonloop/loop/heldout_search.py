"""Inference-time search on the held-out set: `<method>@<budget>` next to pass@1 and maj@k.

`reasoner.search` picks the method (best-of-N, weighted vote, step-level beam search, MCTS), its
budget and its scorer; this module builds the scorer from the round's checkpoint (the ORM, the
PRM) or the family (`check_step`, an oracle), runs the search over the held-out tasks and
returns its accuracy overall and by level, plus the tokens it generated. Budgets are in full
samples' worth of tokens (see `SearchConfig.budget`): MCTS gets `budget` times the tokens of
each task's greedy solution, which is decoded here for that purpose and counted too.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from reasonloop.config import RunConfig, SearchConfig
from reasonloop.evaluator.process_reward_model import PRM_FILE, ProcessRewardModel, aggregate
from reasonloop.evaluator.reward_model import ORM_FILE, OutcomeRewardModel
from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.models.rollouts import Rollouts, as_rollouts
from reasonloop.reasoner.beam_search import beam_search
from reasonloop.reasoner.mcts import mcts, rollout_value, step_value
from reasonloop.reasoner.search import Scorer, search
from reasonloop.reasoner.step_search import (
    StepScorer,
    check_step_scorer,
    completer,
    outcome_as_step_scorer,
    step_proposer,
)
from reasonloop.tasks.base import Family
from reasonloop.types import Task


def search_scorers(
    sc: SearchConfig, family: Family, tasks: list[Task], model: LanguageModel, checkpoint: Path
) -> tuple[StepScorer, Scorer] | None:
    """(step scorer, outcome scorer) for `sc.scorer`, or None when the round's learned scorer
    has no checkpoint (round 0 trains none)."""
    if sc.scorer == "check_step":
        steps = check_step_scorer(family, tasks)
        return steps, lambda ps, cs: [aggregate(s, sc.aggregate) for s in steps(ps, cs)]
    if sc.scorer == "orm":
        if not (checkpoint / ORM_FILE).exists():
            return None
        orm = OutcomeRewardModel.load(checkpoint / ORM_FILE, model)
        return outcome_as_step_scorer(orm.score), orm.score
    # The PRM's own step scores; as an outcome scorer, their aggregate.
    if not (checkpoint / PRM_FILE).exists():
        return None
    prm = ProcessRewardModel.load(checkpoint / PRM_FILE, model)
    return prm.step_scores, prm.scorer(sc.aggregate)


def search_metrics(
    cfg: RunConfig,
    family: Family,
    tasks: list[Task],
    model: LanguageModel,
    gen: LanguageModel | Rollouts,
    checkpoint: Path,
    seed: int,
) -> dict[str, Any]:
    """`{name: accuracy, name_by_level: {...}, "tokens": generated}` with name
    `<method>@<budget>`; empty for `method: sample` or when the scorer does not exist yet."""
    sc = cfg.reasoner.search
    if sc.method == "sample" or not tasks:
        return {}
    scorers = search_scorers(sc, family, tasks, model, checkpoint)
    if scorers is None:
        return {}
    step_scorer, outcome = scorers
    rc = cfg.reasoner
    sampling = Sampling(temperature=sc.temperature, max_new_tokens=rc.max_new_tokens, seed=seed)
    prompts = [t.prompt for t in tasks]
    tokens = 0
    if sc.method in ("best_of_n", "weighted_vote"):
        found = search(gen, family, tasks, sc.budget, sampling, outcome, rc.batch_size)
        tokens = sum(f.tokens for f in found)
        answers = [f.best_of_n if sc.method == "best_of_n" else f.weighted_majority for f in found]
    elif sc.method == "beam":
        propose = step_proposer(gen, sampling, rc.batch_size)
        beams = beam_search(
            prompts, propose, step_scorer, sc.beam_width, sc.expansions, sc.max_steps, sc.aggregate
        )
        tokens = sum(b.tokens for b in beams)
        answers = [b.answer for b in beams]
    else:
        greedy = Sampling(temperature=0.0, max_new_tokens=rc.max_new_tokens)
        lengths = [
            cs[0].n_tokens for cs in as_rollouts(gen).generate(prompts, 1, greedy, rc.batch_size)
        ]
        tokens = sum(lengths)
        value = (
            step_value(step_scorer, sc.aggregate)
            if sc.value == "step"
            else rollout_value(completer(gen, sampling, rc.batch_size), outcome)
        )
        found_mcts = mcts(
            prompts,
            step_proposer(gen, sampling, rc.batch_size),
            value,
            sc.simulations,
            sc.expansions,
            sc.c_puct,
            sc.prior,
            sc.max_steps,
            [sc.budget * max(1, n) for n in lengths],
        )
        tokens += sum(r.tokens for r in found_mcts)
        answers = [r.answer for r in found_mcts]
    right: dict[int, list[bool]] = defaultdict(list)
    for t, a in zip(tasks, answers, strict=True):
        right[t.difficulty].append(family.verify(t, a) == 1.0)
    flat = [x for v in right.values() for x in v]
    name = f"{sc.method}@{sc.budget}"
    return {
        name: sum(flat) / len(flat),
        f"{name}_by_level": {str(lv): sum(v) / len(v) for lv, v in sorted(right.items())},
        "tokens": tokens,
    }
