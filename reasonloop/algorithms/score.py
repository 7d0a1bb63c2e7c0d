"""A SCoRe-style two-attempt RL stage (Kumar et al. 2024, "Training Language Models to
Self-Correct via Reinforcement Learning").

The model makes attempt 1 (the round's sampled traces), then attempt 2 from the correction
prompt with no feedback (`correction_format`, `?`: intrinsic self-correction, as in SCoRe).
Attempt 2 is rewarded with its own outcome reward plus a bonus for improving on attempt 1
(SCoRe's stage II reward shaping):

    reward = r2 + alpha * (r2 - r1)

so, with 0/1 rewards, a fix (0 -> 1) earns 1 + alpha, keeping a right answer (1 -> 1) earns 1,
failing twice (0 -> 0) earns 0 and breaking a right answer (1 -> 0) earns -alpha: the model is
pushed to correct rather than to repeat its first answer.

Our choices. Training reuses `policy_gradient.train_policy_gradient` (GRPO or RLOO advantages,
clipped surrogate) unchanged: a task's second attempts form one group, each with its own
correction prompt (`Group.prompts`), and the loss is taken on the second attempt's tokens only.
The group baseline is therefore over the task's (attempt 1, attempt 2) pairs; within one group
r1 varies, which is what lets the bonus change the advantages (with a single first attempt per
group, r1 would be a constant that group normalisation removes). SCoRe's stage I (a KL-held
first attempt) is left out; attempt 1 is trained, when `train_first` is on, by plain GRPO on
the round's first-attempt groups with reward r1, the other half of SCoRe's stage-II objective.
"""

from __future__ import annotations

from reasonloop.algorithms.policy_gradient import Group
from reasonloop.postprocess import correction_format as cf
from reasonloop.types import Judgement, Task, Trace

LABEL = "score"
"""`decoding["postprocess"]` of a second attempt made for this stage."""


def shaped_reward(r1: float, r2: float, alpha: float) -> float:
    """SCoRe's stage-II reward of a second attempt: r2 plus alpha times the improvement."""
    return r2 + alpha * (r2 - r1)


def score_groups(
    tasks: dict[str, Task], traces: list[Trace], judgements: list[Judgement], alpha: float
) -> list[Group]:
    """One group per task of its second attempts (traces with decoding postprocess `score` whose
    parent is in `traces`), each completion with its own correction prompt and shaped reward.
    A trace's reward is its outcome judgement's score (0 when it has none). Groups of fewer than
    two second attempts are left out (no baseline)."""
    score = {
        j.trace_id: (j.scores[0] if j.scores else 0.0) for j in judgements if j.level == "outcome"
    }
    by_id = {t.id: t for t in traces}
    groups: dict[str, Group] = {}
    for t in traces:
        if t.decoding.get("postprocess") != LABEL or t.parent not in by_id:
            continue
        if t.task_id not in tasks:
            continue
        first = by_id[t.parent]
        task = tasks[t.task_id]
        g = groups.setdefault(t.task_id, Group(t.task_id, task.prompt, [], [], prompts=[]))
        assert g.prompts is not None
        g.prompts.append(cf.build(task.prompt, first.text, cf.NO_FEEDBACK))
        g.completions.append(t.text)
        r1 = float(score.get(first.id, 0.0))
        r2 = float(score.get(t.id, 0.0))
        g.rewards.append(shaped_reward(r1, r2, alpha))
    return [g for g in groups.values() if len(g.completions) >= 2]
