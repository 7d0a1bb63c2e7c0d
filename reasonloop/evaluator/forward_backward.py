"""Forward-backward consistency (FOBAR, Jiang et al. 2024): label-free outcome judging that
checks each candidate answer by reasoning backwards.

Forward, a task's k samples vote for their answers (self-consistency). Backward, for each of the
most voted candidates A the family poses questions with one number of the task hidden and A
given as known (`Family.backward`): linear equations hide a coefficient (`3x+4=19:`, x = 5 ->
`5x+4=19:`, whose solution is 3 only if 5 is right), chained sums hide a term. The Reasoner
solves each question a few times; A's backward rate is the share of those solutions that give
back the hidden number. Neither direction reads a gold answer.

FOBAR combines the two as P(A) proportional to P_forward(A)^alpha * P_backward(A)^(1 - alpha)
and picks the best A. Here A's score is that product raised to 1/alpha, which ranks the
candidates the same way and can be held to a bar like a vote share: the vote share times the
backward hit rate to the power (1 - alpha) / alpha (at FOBAR's alpha = 0.5, simply vote share x
hit rate). Samples without an answer vote for nobody, and a candidate no question was asked
about is not refuted (rate 1), so with no backward questions at all the score is the vote share
and the judge is the majority vote; a candidate whose every backward solution missed scores 0.
A trace is judged right when its answer has the task's highest score and that score reaches
`min_share`.

Natural-language families (reasoning-gym, task files) use FOBAR's own template
(`text_questions`): one number of the question replaced by X, then "If we know the answer to the
above question is A, what is the value of unknown variable X?".
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from reasonloop.evaluator import verifiers
from reasonloop.types import Judgement, Task, Trace

EVALUATOR_ID = "forward-backward"
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\w)")
TEMPLATE = (
    "{question}\nIf we know the answer to the above question is {answer}, "
    "what is the value of unknown variable X?"
)


def text_questions(prompt: str, answer: str, limit: int = 2) -> list[tuple[str, str]]:
    """FOBAR's backward questions of a natural-language prompt for a numeric `answer`:
    (question, hidden number), one per number in the prompt (first ones first, at most
    `limit`). None for an answer that is not a number."""
    if verifiers.parse_number(answer) is None:
        return []
    out = []
    for m in list(_NUMBER.finditer(prompt))[:limit]:
        question = prompt[: m.start()] + "X" + prompt[m.end() :]
        out.append((TEMPLATE.format(question=question, answer=answer.strip()), m.group()))
    return out


def fobar_scores(
    votes: Counter[str], backward: dict[str, tuple[int, int]], n_samples: int, alpha: float
) -> dict[str, float]:
    """Each candidate's score vote_share * backward_rate^((1 - alpha) / alpha), FOBAR's
    ranking (alpha in (0, 1]). `votes`: samples per answer; `backward`: (hits, asked) per
    answer (missing or none asked: rate 1); `n_samples`: the task's samples, answered or not."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if not n_samples:
        return {}
    out = {}
    for a, n in votes.items():
        hits, asked = backward.get(a, (0, 0))
        rate = hits / asked if asked else 1.0
        out[a] = n / n_samples * rate ** ((1 - alpha) / alpha)
    return out


@dataclass
class ForwardBackward:
    """What the judge did in a round: its backward questions and their solutions (stored with
    the round for lineage) and the judgements of the forward traces."""

    judgements: list[Judgement]
    questions: list[Task]
    solutions: list[Trace]
    info: dict[str, float | int]


Solver = Callable[[list[Task]], list[Trace]]
"""Backward questions -> the Reasoner's traces for them (several per question)."""


def judge_forward_backward(
    tasks: dict[str, Task],
    traces: list[Trace],
    pose: Callable[[Task, str], list[Task]],
    solve: Solver,
    rnd: int,
    min_share: float,
    alpha: float = 0.5,
    candidates: int = 2,
    questions: int = 1,
    max_prompt_chars: int | None = None,
) -> ForwardBackward:
    """Judge `traces` by forward votes and backward checks.

    `pose(task, answer)` gives the backward questions of a candidate (`Family.backward`); the
    `candidates` most voted answers of each task get at most `questions` each, and questions
    longer than `max_prompt_chars` are skipped (an absurd candidate makes an absurd prompt)."""
    by_task: dict[str, list[Trace]] = defaultdict(list)
    for tr in traces:
        by_task[tr.task_id].append(tr)
    posed: list[Task] = []
    asked_for: dict[str, tuple[str, str]] = {}  # question id -> (task id, candidate)
    votes: dict[str, Counter[str]] = {}
    ranked: dict[str, list[tuple[str, int]]] = {}
    for task_id, group in by_task.items():
        votes[task_id] = Counter(t.answer for t in group if t.answer is not None)
        ranked[task_id] = _ranked(votes[task_id], group)
        task = tasks.get(task_id)
        if task is None:
            continue
        for answer, _ in ranked[task_id][:candidates]:
            for q in pose(task, answer)[:questions]:
                if max_prompt_chars is not None and len(q.prompt) > max_prompt_chars:
                    continue
                if q.id not in asked_for:
                    posed.append(q)
                    asked_for[q.id] = (task_id, answer)
    solutions = solve(posed) if posed else []
    question = {q.id: q for q in posed}
    # task id -> candidate -> (hits, asked)
    tally: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for s in solutions:
        if s.task_id not in asked_for:
            continue
        hit = verifiers.numeric(s.answer, question[s.task_id].answer) == 1.0
        task_id, answer = asked_for[s.task_id]
        hits, asked = tally[task_id].get(answer, (0, 0))
        tally[task_id][answer] = (hits + hit, asked + 1)
    out: list[Judgement] = []
    flipped = 0
    for task_id, group in by_task.items():
        scores = fobar_scores(votes[task_id], tally.get(task_id, {}), len(group), alpha)
        winner = max(scores, key=lambda a: (scores[a], -_first(group, a))) if scores else None
        if ranked[task_id] and winner != ranked[task_id][0][0]:
            flipped += 1
        for tr in group:
            own = scores.get(tr.answer, 0.0) if tr.answer is not None else 0.0
            ok = tr.answer is not None and tr.answer == winner and own >= min_share and own > 0
            out.append(Judgement(tr.id, EVALUATOR_ID, "outcome", [own], verdict=ok, round=rnd))
    hits = sum(h for per in tally.values() for h, _ in per.values())
    asked = sum(n for per in tally.values() for _, n in per.values())
    info: dict[str, float | int] = {
        "questions": len(posed),
        "solutions": asked,
        "backward_hit_rate": hits / asked if asked else 0.0,
        "tasks_flipped": flipped,
    }
    return ForwardBackward(out, posed, solutions, info)


def _first(group: list[Trace], answer: str) -> int:
    return next(i for i, t in enumerate(group) if t.answer == answer)


def _ranked(votes: Counter[str], group: list[Trace]) -> list[tuple[str, int]]:
    """Answers by votes, ties to the one seen first (as the majority vote breaks them)."""
    return sorted(votes.items(), key=lambda kv: (-kv[1], _first(group, kv[0])))
