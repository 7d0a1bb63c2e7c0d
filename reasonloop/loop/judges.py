"""The round loop's hooks for the pair-wise reward model and the generative verifier.

Thin orchestration kept out of `loop/run.py`: which records each learned judge reads in a round,
with which derived seed, and where it is saved, so `run.py` only calls these. The methods
themselves are `evaluator/bradley_terry.py` and `evaluator/generative_verifier.py`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from reasonloop.config import RunConfig
from reasonloop.evaluator.bradley_terry import BT_RM_FILE, PairwiseRewardModel, bt_pairs, train_bt
from reasonloop.evaluator.generative_verifier import (
    GenerativeVerifier,
    corrupted_items,
    judged_items,
    verification_examples,
    verification_pairs,
)
from reasonloop.models.base import LanguageModel
from reasonloop.reasoner.search import Scorer
from reasonloop.tasks.base import Family
from reasonloop.types import Judgement, PreferencePair, SFTExample, Task, Trace

# Offsets on the phase seed, so each judge's draws are independent of the phase's own.
_PAIRS_SEED = 2
_VERIFY_SEED = 3


def verifier_examples(
    cfg: RunConfig,
    family: Family,
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    r: int,
    seed: int,
) -> list[SFTExample]:
    """The round's verification SFT examples (none when the generative verifier is off).

    Round 0 (the supervised seed): its reference traces and one-digit corruptions of them,
    labelled by the family's verifier. Later rounds: the round's traces with its verdicts."""
    gv = cfg.evaluator.generative_verifier
    if not gv.enabled:
        return []
    rng = random.Random(seed + _VERIFY_SEED)
    if r == 0:
        items, limit = corrupted_items(family, tasks, traces, rng), gv.seed_examples
    else:
        items, limit = judged_items(tasks, traces, judgements), gv.examples_per_round
    return verification_examples(items, family, gv.with_critique, limit, rng, r)


def with_verification(
    cfg: RunConfig,
    r: int,
    examples: list[SFTExample],
    pairs: list[PreferencePair],
    verify: list[SFTExample],
) -> tuple[list[SFTExample], list[PreferencePair]]:
    """Where the round's verification data goes: into the pairs when the round trains with
    preference pairs (iterative DPO after round 0), else into the SFT examples."""
    if r > 0 and cfg.strategy.algorithm == "iterative-dpo":
        return examples, pairs + verification_pairs(verify)
    return examples + verify, pairs


def judge_accuracy(
    family: Family, tasks: dict[str, Task], traces: list[Trace], judgements: list[Judgement]
) -> float | None:
    """Share of the round's un-hinted verdicts that agree with the gold verifier (gold is read
    only to measure). None when no trace has a gold answer."""
    verdict = {j.trace_id: bool(j.verdict) for j in judgements if j.level == "outcome"}
    agree = [
        verdict[t.id] == (family.verify(tasks[t.task_id], t.answer) == 1.0)
        for t in traces
        if t.id in verdict
        and t.task_id in tasks
        and tasks[t.task_id].answer is not None
        and not t.decoding.get("hint")
    ]
    return sum(agree) / len(agree) if agree else None


def train_pairwise(
    cfg: RunConfig,
    previous: Path,
    r: int,
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    model: LanguageModel,
    seed: int,
) -> tuple[PairwiseRewardModel, dict[str, Any]]:
    """The round's Bradley-Terry reward model: carried from `previous` (the last checkpoint)
    when it has one and `carry` is on, trained on the round's pairs, its offset fitted on the
    round's judged traces."""
    pw = cfg.evaluator.pairwise_reward_model
    saved = previous / BT_RM_FILE
    carried = pw.carry and saved.exists()
    rm = (
        PairwiseRewardModel.load(saved, model)
        if carried
        else PairwiseRewardModel.from_policy(model)
    )
    rng = random.Random(seed + _PAIRS_SEED)
    pairs = bt_pairs(tasks, traces, judgements, r, pw.pairs_per_task, rng)
    judged = judged_items(tasks, traces, judgements)
    calibrate = (
        [t.prompt for t, _, _ in judged],
        [c for _, c, _ in judged],
        [y for *_, y in judged],
    )
    info = train_bt(rm, pairs, pw.train, seed + _PAIRS_SEED, pw.margin, calibrate)
    keys = ("n_pairs", "steps", "seconds", "loss_first", "loss_last", "pair_accuracy", "offset")
    return rm, {k: info[k] for k in keys} | {"carried": carried}


def eval_scorers(cfg: RunConfig, model: LanguageModel, checkpoint: Path) -> dict[str, Scorer]:
    """The learned judges to calibrate on the held-out samples, by their metric name. The BT
    model is read back from the checkpoint, so a run resumed before its eval scores the same."""
    ev = cfg.evaluator
    out: dict[str, Scorer] = {}
    if ev.pairwise_reward_model.enabled and (checkpoint / BT_RM_FILE).exists():
        out["pairwise_rm"] = PairwiseRewardModel.load(checkpoint / BT_RM_FILE, model).score
    if ev.generative_verifier.enabled:
        out["generative_verifier"] = GenerativeVerifier(
            model, ev.generative_verifier.with_critique
        ).score
    return out
