"""Label-free outcome judging: self-consistency (majority vote) over a task's k samples.

A trace's score is the vote share of its answer among its task's traces; it is judged right
when its answer is the majority answer and that share reaches `min_share`. No gold answer is
read here, which is what makes easy-to-hard self-labelling label-free.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from reasonloop.types import Judgement, Trace

EVALUATOR_ID = "consensus"


def majority_vote(answers: list[str | None]) -> tuple[str | None, float]:
    """(most common answer, its share of all votes); ties go to the answer seen first.

    Missing answers (None) count as votes for nobody, so a task where most samples are
    malformed cannot reach a high share.
    """
    if not answers:
        return None, 0.0
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0.0
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return winner, best / len(answers)


def judge_consensus(traces: list[Trace], rnd: int, min_share: float) -> list[Judgement]:
    by_task: dict[str, list[Trace]] = defaultdict(list)
    for tr in traces:
        by_task[tr.task_id].append(tr)
    out = []
    for group in by_task.values():
        answers = [t.answer for t in group]
        winner, share = majority_vote(answers)
        counts = Counter(answers)
        for tr in group:
            own = counts[tr.answer] / len(group) if tr.answer is not None else 0.0
            ok = tr.answer is not None and tr.answer == winner and share >= min_share
            out.append(Judgement(tr.id, EVALUATOR_ID, "outcome", [own], verdict=ok, round=rnd))
    return out
