"""A learned task proposer, as in Absolute Zero (Zhao et al. 2025, "Absolute Zero: Reinforced
Self-play Reasoning with Zero Data"): the model that solves also proposes.

The same model reads a proposer prompt `?L<level>:` and writes a program
(`?L3:` -> `12+7*3`, the grammar of `tasks/programs.py`; for the addition family a sum,
`?L7:` -> `4821907+3300126`). The sandbox runs every proposal
(batched) for its gold answer; invalid, unsafe, failing or oversized proposals are rejected
with the reason. The verified ones become the round's program tasks; the solver attempts them
(k samples) and each proposal earns the learnability reward of Absolute Zero (their eq. for
r_propose):

    r = 1 - p   when 0 < p < 1,   else 0,

p being the solver's solve rate on it, so tasks the solver always or never solves teach the
proposer nothing. Our choices:

- Training is rejection-sampling SFT (not REINFORCE): proposals with r > `min_reward` become SFT
  examples `?L<level>:` -> program, trained in the same step as the solver's kept traces. The
  prompt carries the proposal's *measured* level, not the asked one (hindsight relabelling),
  so the level in the prompt keeps meaning "this many operations" (or digits).
- Difficulty is the family's level of the program (`Proposable.program_level`): the operation
  count for programs, the longer operand's digits for addition. The asked levels follow the
  solver's measured competence, as the adaptive curriculum does (`tasks/curriculum.py`): the
  level whose per-sample success lies in `creator.target_band` with the highest p(1-p), and the
  `levels_ahead - 1` above it, so the proposer is asked where its reward can be earned and the
  next level up is always measured, moving up as the solver improves. A frontier that waits
  for mastery would ask where the solver solves nothing (p = 0: no reward, no kept traces).
- A program without an operation (`5`, `-(7)`) is rejected as `trivial`: its answer is its
  text, so solving it teaches nothing and it would only pad the round.
- Round 0 teaches the format: `seed_examples` generator programs as proposer examples.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection
from statistics import mean
from typing import Any, ClassVar, Protocol, runtime_checkable

from reasonloop.config import ProposerConfig
from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.report.diversity import distinct_share, mean_jaccard_distance
from reasonloop.tasks import programs
from reasonloop.tasks.reliability import RejectedTask, rejected
from reasonloop.types import Judgement, SFTExample, Task, Trace, stable_id

PROPOSER_MARK = "proposer:"
"""`made_by` of a proposed task starts with this (then the model version)."""


@runtime_checkable
class Proposable(Protocol):
    """A family whose tasks the proposer can write as programs (`tasks/programs.py`): the
    program family (any expression; level = operations) and addition (`a+b`; level = digits)."""

    name: ClassVar[str]
    levels: ClassVar[tuple[int, ...]]
    max_program_answer: ClassVar[int]

    def draw(self, rng: random.Random, level: int) -> str:
        """A generator program of `level` (round 0's format examples)."""
        ...

    def program_level(self, text: str) -> int:
        """The level of a checked program as a task (the prompt's hindsight level)."""
        ...

    def task_from_proposal(self, text: str, answer: str) -> Task:
        """The task of a checked program the sandbox ran to `answer`, or `ProgramRejected`."""
        ...


def proposer_prompt(level: int) -> str:
    """The prompt asking for a program with `level` operations."""
    return f"?L{int(level)}:"


def parse_proposal(text: object) -> str:
    """The program text of a completion: its first line, stripped (untrusted: checked later)."""
    if not isinstance(text, str):
        return ""
    return text.split("\n", 1)[0].strip()


def learnability(p: float) -> float:
    """Absolute Zero's proposer reward: 1 - p for 0 < p < 1, else 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"solve rate must be in [0, 1], got {p!r}")
    return 1.0 - p if 0.0 < p < 1.0 else 0.0


def sample_proposals(
    model: LanguageModel,
    levels: list[int],
    cfg: ProposerConfig,
    seed: int,
    batch_size: int = 512,
) -> list[tuple[int, str]]:
    """`cfg.proposals` (asked level, program text) pairs, levels in turn, sampled in batches
    (one level's prompt per batch). Returned interleaved, levels in turn as asked, so that a
    round keeping only the first `per_round` verified ones keeps every asked level alike."""
    asked = [levels[i % len(levels)] for i in range(cfg.proposals)]
    by_level = Counter(asked)
    drawn: dict[int, list[str]] = {}
    for j, (level, n) in enumerate(sorted(by_level.items())):
        sampling = Sampling(
            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=seed + j
        )
        done = 0
        while done < n:
            k = min(n - done, max(1, batch_size))
            comps = model.generate([proposer_prompt(level)], k, sampling)[0]
            drawn.setdefault(level, []).extend(parse_proposal(c.text) for c in comps)
            done += k
            sampling = Sampling(
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                seed=seed + j + 7919 * done,
            )
    taken = Counter[int]()
    out: list[tuple[int, str]] = []
    for level in asked:
        out.append((level, drawn[level][taken[level]]))
        taken[level] += 1
    return out


def verify_proposals(
    family: Proposable,
    proposals: list[tuple[int, str]],
    limit: int,
    exclude: Collection[str],
    rnd: int,
    made_by: str,
) -> tuple[list[Task], list[RejectedTask], dict[str, Any]]:
    """Run the proposals in the sandbox (one batch) and keep up to `limit` distinct verified
    ones as tasks; the rest are rejected with the reason: the program check's or the sandbox's
    (`invalid_program`, `sandbox_timeout`, ...), `too_large`, the family's
    (`task_from_proposal`: `trivial` for a program without an operation, `reference_mismatch`
    when our step writer disagrees with the sandbox, `off_family` for addition's non-sums),
    `heldout` (the task is in the held-out set), `duplicate`, `over_limit`."""
    texts = [p for _, p in proposals]
    results = programs.run_programs(texts)
    kept: dict[str, Task] = {}
    rejects: list[RejectedTask] = []
    for (level, text), res in zip(proposals, results, strict=True):
        answer, why = programs.gold_answer(res, family.max_program_answer)
        detail, task = res.message, None
        if answer is not None:
            try:
                task = family.task_from_proposal(text, answer)
            except programs.ProgramRejected as e:
                why, detail = e.reason, e.message
        if task is None:  # no task to name: the rejection names the proposal's own text
            stub = Task(
                id=stable_id("proposal", text),
                family=family.name,
                prompt=text + "=",
                answer=answer,
                made_by=made_by,
                round=rnd,
            )
            rejects.append(rejected(stub, why, detail))
            continue
        task.made_by, task.round = made_by, rnd
        task.params["asked_level"] = level
        if task.id in exclude:
            rejects.append(rejected(task, "heldout"))
        elif task.id in kept:
            rejects.append(rejected(task, "duplicate"))
        elif len(kept) >= limit:
            rejects.append(rejected(task, "over_limit"))
        else:
            kept[task.id] = task
    tasks = list(kept.values())
    texts_c = [programs.canonical(t) for _, t in proposals]
    verified = len(proposals) - sum(
        r.reason not in ("duplicate", "over_limit", "heldout") for r in rejects
    )
    info = {
        "proposals": len(proposals),
        "verified": verified,
        "verified_share": round(verified / len(proposals), 4) if proposals else None,
        "kept": len(tasks),
        "rejected": dict(sorted(Counter(r.reason for r in rejects).items())),
        "difficulty_asked_mean": round(mean(lv for lv, _ in proposals), 3) if proposals else None,
        **difficulty_stats(tasks),
        "proposal_distinct": distinct_share(texts_c),
        "proposal_jaccard_distance": mean_jaccard_distance([t.prompt for t in tasks]),
    }
    return tasks, rejects, info


def difficulty_stats(tasks: list[Task]) -> dict[str, Any]:
    """Mean and histogram of the tasks' levels (the family's difficulty: operations, digits),
    and how many programs use each binary operator (a diversity measure)."""
    ops = [t.difficulty for t in tasks]
    kinds = Counter(k for t in tasks for k in programs.binary_operators(str(t.params["program"])))
    return {
        "difficulty_mean": round(mean(ops), 3) if ops else None,
        "difficulty_hist": {str(k): v for k, v in sorted(Counter(ops).items())},
        "operators": dict(sorted(kinds.items())),
    }


def solve_rates(traces: list[Trace], judgements: list[Judgement]) -> dict[str, float]:
    """Per task, the share of its sampled traces judged right: a rationalisation (hint) saw the
    answer and a correction (`parent` set) saw a first attempt, so neither is a solve."""
    verdict = {j.trace_id: bool(j.verdict) for j in judgements if j.level == "outcome"}
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for t in traces:
        if t.id in verdict and not t.decoding.get("hint") and not t.parent:
            total[t.task_id] += 1
            right[t.task_id] += verdict[t.id]
    return {k: right[k] / n for k, n in total.items()}


def proposer_examples(
    tasks: list[Task], rates: dict[str, float], min_reward: float, rnd: int
) -> tuple[list[SFTExample], dict[str, Any]]:
    """Rejection-sampling SFT examples for the proposer: its proposals whose learnability reward
    exceeds `min_reward`, with the reward statistics of the round."""
    proposed = [t for t in tasks if t.made_by.startswith(PROPOSER_MARK) and t.id in rates]
    rewards = {t.id: learnability(rates[t.id]) for t in proposed}
    examples = [
        SFTExample(
            proposer_prompt(t.difficulty),
            str(t.params["program"]),
            task_id=t.id,
            round=rnd,
        )
        for t in proposed
        if rewards[t.id] > min_reward
    ]
    info = {
        "proposals_solved_by_all": sum(rates[t.id] == 1.0 for t in proposed),
        "proposals_solved_by_none": sum(rates[t.id] == 0.0 for t in proposed),
        "reward_mean": round(mean(rewards.values()), 4) if rewards else None,
        "trained": len(examples),
    }
    return examples, info


def seed_examples(
    family: Proposable, rng: random.Random, n: int, levels: list[int], rnd: int = 0
) -> list[SFTExample]:
    """`n` generator programs as proposer examples, levels in turn (round 0: the format)."""
    out = []
    for i in range(n):
        text = family.draw(rng, levels[i % len(levels)])
        out.append(
            SFTExample(proposer_prompt(family.program_level(text)), text, task_id="", round=rnd)
        )
    return out
