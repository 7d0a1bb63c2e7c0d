"""Step agreement: how many of a task's other samples write the same step.

A second, free source of step labels beside Monte-Carlo rollouts (`math_shepherd.py`). A step's
support is the share of the task's other sampled traces that contain the identical step text.
Right steps recur across samples (there is one right running total, one right partial result);
a slip is rarely made the same way twice, and every step after it carries the slip forward, so
those steps recur only in the traces that made the same slip.

Why it is needed: rollouts cannot see a wrong step that has already fixed a lucky answer. On a
yes/no question (`tasks/families/sum_above.py`) a wrong running total leaves the answer right
about half the time, and rollouts from that prefix reach the gold answer as often as from a
sound one (measured: the least Monte-Carlo label tells sound from wrong-step right-answer traces
at AUROC 0.49-0.67; the least support at 0.61-0.84; docs/benchmarks.md). Combining the two by
taking the smaller label per step is consensus filtering of Monte-Carlo labels (Zhang et al.
2025, "The Lessons of Developing Process Reward Models in Mathematical Reasoning", who pair
them with a judge model instead; the task's own samples are ours).

In the loop (`prm-cooperative` on `benchmarks/methods.py --testbed sum_above_few`, 5 seeds) it
lifted the PRM's AUROC on the traces it filters by 0.03-0.12 in every round, but not held-out
pass@1: the sharper PRM dropped more of a pool that was worth keeping. So it is off by default.

What it cannot see: a mistake the policy makes in most samples (a systematic error) has high
support. Exact text match suits step formats with one right way to write a step (the
procedural families); free-text steps would need a looser match.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from reasonloop.types import Trace


def step_support(steps: Sequence[str], others: Sequence[Sequence[str]]) -> list[float]:
    """For each of `steps`, the share of `others` (other samples of the same task, as step
    lists) that contain the identical step anywhere. Needs at least one other sample."""
    if not others:
        raise ValueError("step_support needs at least one other sample of the task")
    sets = [set(o) for o in others]
    return [sum(s in o for o in sets) / len(sets) for s in steps]


def agreement_labels(traces: Sequence[Trace]) -> dict[str, list[float]]:
    """Each trace's step supports among the other traces of its task in `traces`; traces whose
    task has no other sample are left out (nothing to agree with)."""
    by_task: dict[str, list[Trace]] = defaultdict(list)
    for t in traces:
        by_task[t.task_id].append(t)
    out: dict[str, list[float]] = {}
    for group in by_task.values():
        for t in group:
            others = [o.steps for o in group if o.id != t.id]
            if others:
                out[t.id] = step_support(t.steps, others)
    return out


def combine(mc: Sequence[float], support: Sequence[float]) -> list[float]:
    """Monte-Carlo labels (k step labels, then the answer's) capped by the steps' support: the
    smaller of the two per step; the answer's label (the verdict) is kept as it is."""
    k = len(mc) - 1
    if len(support) != k:
        raise ValueError(f"{len(support)} step supports for {k} step labels")
    return [min(m, s) for m, s in zip(mc[:k], support, strict=True)] + [mc[k]]
