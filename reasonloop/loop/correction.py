"""The round loop's hooks for correcting traces (`postprocess.correct`), kept out of `run.py`.

Which traces each mode corrects, how the new ones are judged, what they add to the round's
training data, and where they are stored. The methods themselves are
`postprocess/self_refine.py`, `postprocess/corrector.py` and `algorithms/score.py`.

Corrections are made at the start of the process phase with the model that sampled the round
(seeded from the process phase's seed, so a redone phase makes the same ones), judged by the
round's Evaluator, and written to `corrections.parquet` and `correction_judgements.parquet` of
the round; `run.py` adds them to the round's traces and judgements before the Post-Processor
decides on every trace.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from reasonloop.algorithms.policy_gradient import Group
from reasonloop.algorithms.score import LABEL as SCORE_LABEL
from reasonloop.algorithms.score import score_groups
from reasonloop.config import RunConfig
from reasonloop.evaluator.gold import judge_gold
from reasonloop.loop.heldout_correction import correction_effect
from reasonloop.loop.store import read_records, write_records
from reasonloop.models.base import Sampling
from reasonloop.models.rollouts import Rollouts
from reasonloop.postprocess.corrector import corrector_examples, seed_examples
from reasonloop.postprocess.self_refine import Judge, refine
from reasonloop.tasks.base import Family
from reasonloop.types import Judgement, SFTExample, Task, Trace

CORRECTIONS = "corrections.parquet"
CORRECTION_JUDGEMENTS = "correction_judgements.parquet"
CONSENSUS_ID = "consensus-answer"
_SEED_OFFSET = 7
"""Offset on the process phase's seed, so corrections draw independently of its other draws."""


def enabled(cfg: RunConfig, r: int) -> bool:
    """Corrections run in rounds after the seed (round 0's reference traces are all right)."""
    return r > 0 and cfg.postprocess.correct.mode != "none"


def round_judge(
    cfg: RunConfig,
    family: Family,
    tasks: dict[str, Task],
    judgements: list[Judgement],
    traces: list[Trace],
    r: int,
) -> Judge:
    """The round's Evaluator for new traces. `gold`: the family's verifier. Label-free kinds
    (consensus, forward-backward, generative): a correction is right when its answer is one its
    task's sampled traces were judged right with (for a vote, the winning answer); none, judged
    wrong. No gold answer is read, so a label-free run stays label-free with corrections on."""
    if cfg.evaluator.kind == "gold":
        return lambda new: judge_gold(family, tasks, new, r)
    right = {j.trace_id for j in judgements if j.level == "outcome" and j.verdict}
    winners: dict[str, set[str]] = {}
    for t in traces:
        if t.id in right and t.answer is not None:
            winners.setdefault(t.task_id, set()).add(t.answer)

    def judge(new: list[Trace]) -> list[Judgement]:
        out = []
        for t in new:
            ok = t.answer is not None and t.answer in winners.get(t.task_id, ())
            out.append(Judgement(t.id, CONSENSUS_ID, "outcome", [float(ok)], verdict=ok, round=r))
        return out

    return judge


def correct_round(
    cfg: RunConfig,
    gen: Rollouts,
    family: Family,
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    r: int,
    seed: int,
) -> tuple[list[Trace], list[Judgement]]:
    """The round's corrections and their judgements. refine/corrector: the sampled traces
    judged wrong, with the configured feedback, up to `attempts` times; score: one second
    attempt without feedback for every sampled trace. Hinted (STaR) traces are not corrected."""
    c = cfg.postprocess.correct
    rc = cfg.reasoner
    verdict = {j.trace_id: bool(j.verdict) for j in judgements if j.level == "outcome"}
    step_scores = {j.trace_id: j.scores for j in judgements if j.level == "step"}
    first = [t for t in traces if not t.decoding.get("hint") and t.parent is None]
    sampling = Sampling(
        temperature=rc.temperature,
        top_k=rc.top_k,
        top_p=rc.top_p,
        max_new_tokens=rc.max_new_tokens,
        seed=seed + _SEED_OFFSET,
    )
    judge = round_judge(cfg, family, tasks, judgements, traces, r)
    producer = f"reasoner:r{r - 1}"
    if c.mode == "score":
        return refine(
            gen, family, tasks, first, judge, 1, "none", sampling, rc.batch_size, producer, r,
            label=SCORE_LABEL,
        )  # fmt: skip
    wrong = [t for t in first if t.id in verdict and not verdict[t.id]]
    return refine(
        gen, family, tasks, wrong, judge, c.attempts, c.feedback, sampling, rc.batch_size,
        producer, r, step_scores=step_scores,
    )  # fmt: skip


def write(d: Path, traces: list[Trace], judgements: list[Judgement]) -> None:
    write_records(d / CORRECTIONS, traces, Trace)
    write_records(d / CORRECTION_JUDGEMENTS, judgements, Judgement)


def read(d: Path) -> tuple[list[Trace], list[Judgement]]:
    """A finished process phase's corrections (none when the round made no file)."""
    if not (d / CORRECTIONS).exists():
        return [], []
    return read_records(d / CORRECTIONS, Trace), read_records(d / CORRECTION_JUDGEMENTS, Judgement)


def stats(new: list[Trace], new_judgements: list[Judgement]) -> dict[str, Any]:
    """How many corrections were made, per attempt, and how many were judged right."""
    right = {j.trace_id for j in new_judgements if j.level == "outcome" and j.verdict}
    return {
        "corrections": len(new),
        "corrections_right": sum(t.id in right for t in new),
        "corrections_by_attempt": dict(
            sorted(Counter(str(t.decoding.get("attempt")) for t in new).items())
        ),
    }


def training_examples(
    cfg: RunConfig,
    family: Family,
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    r: int,
    seed: int,
) -> list[SFTExample]:
    """Round 0: `seed_pairs` correction examples, injected errors and keeps (any mode); later
    rounds in corrector mode: the round's (wrong -> right) and (right -> same) correction
    examples; none otherwise."""
    c = cfg.postprocess.correct
    if c.mode == "none":
        return []
    if r == 0:
        rng = random.Random(seed + _SEED_OFFSET)
        return seed_examples(tasks, traces, family, c.seed_pairs, c.feedback, rng, c.keep_share)
    if c.mode != "corrector":
        return []
    return corrector_examples(
        tasks, traces, judgements, family, r, c.pairs_per_task, c.feedback, c.keep_share
    )


def first_attempts(traces: list[Trace]) -> list[Trace]:
    """The round's sampled traces without its corrections (those answer correction prompts, not
    the task prompt, so they are no samples of the task's group)."""
    return [t for t in traces if t.parent is None]


def with_second_attempts(
    cfg: RunConfig,
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    first_groups: list[Group],
) -> list[Group]:
    """score mode: the groups a policy-gradient round trains on, i.e. the first attempts'
    groups (when `train_first`) followed by the second attempts' SCoRe groups; other modes:
    `first_groups` unchanged."""
    c = cfg.postprocess.correct
    if c.mode != "score":
        return first_groups
    second = score_groups(tasks, traces, judgements, c.alpha)
    return (first_groups if c.train_first else []) + second


def heldout_metric(
    cfg: RunConfig, gen: Rollouts, family: Family, heldout: list[Task]
) -> dict[str, Any]:
    """`heldout.correction`: the corrector's fixed and broken shares and counts on the held-out
    tasks, overall and per level."""
    rc = cfg.reasoner
    return correction_effect(gen, family, heldout, rc.max_new_tokens, rc.batch_size)
