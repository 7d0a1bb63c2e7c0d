"""Reliability checks a proposed task passes before the Reasoner trains on it, each rejection
with its reason (the Task Creator's "reliability" axis: scorer filter, execution check in a
sandbox, consistency of sampled solutions).

The checks, in order (a task is rejected by the first that fails; the reason is recorded):

1. `no_answer`: the task has no gold answer (an unsolvable or label-less proposal).
2. Execution check (program tasks, `params["program"]`): the program is run again in the
   sandbox (`tasks/programs.py`, batched) and its value compared with the stated answer:
   `answer_mismatch`, or the sandbox's kind (`sandbox_timeout`, `sandbox_error`, ...).
3. Scorer filter: a callable scoring task quality in [0, 1] (the built-in `rule_score`, or any
   callable such as an ORM's score of the gold completion); below `min_score`: `low_score`.
4. Sampled solutions (needs a model): k solutions per task. When a share >= `dispute_share`
   agree on an answer other than the gold, the gold is *re-checked* (re-derived in the sandbox
   for program tasks, else by the family's reference solver); a gold that survives the
   re-check is kept (counted as `rechecked`), else `gold_disputed`. With `min_agreement` set, a
   task whose most common sampled answer has a smaller share is `ambiguous` (its samples
   disagree among themselves).

Our choices: the sampled check only re-checks or rejects on confident disagreement, so a hard
task the model simply fails (scattered wrong answers) is kept: that is the task the loop needs.
Rejections become `RejectedTask` records, written by the loop as `rejected_tasks.parquet` of the
round, with counts by reason in the propose phase's info.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reasonloop.config import ReasonerConfig, ReliabilityConfig
from reasonloop.models.base import LanguageModel
from reasonloop.models.rollouts import Rollouts
from reasonloop.reasoner.solve import solve
from reasonloop.tasks import programs
from reasonloop.tasks.base import Family
from reasonloop.types import Record, Task

Scorer = Callable[[Task], float]


@dataclass
class RejectedTask(Record):
    """A proposed task the Task Creator dropped, and why."""

    task_id: str
    family: str
    prompt: str
    answer: str | None
    reason: str
    detail: str = ""
    made_by: str = ""
    round: int = 0


def rejected(task: Task, reason: str, detail: str = "") -> RejectedTask:
    return RejectedTask(
        task_id=task.id,
        family=task.family,
        prompt=task.prompt,
        answer=task.answer,
        reason=reason,
        detail=detail[:200],
        made_by=task.made_by,
        round=task.round,
    )


def rule_score(task: Task, max_chars: int = 200) -> float:
    """A rule scorer: 1.0 for a well-formed task, each defect costing a share: empty or overlong
    prompt, characters outside printable ASCII, an empty answer, the answer written in the
    prompt (a leaked task)."""
    prompt, answer = task.prompt or "", (task.answer or "").strip()
    defects = [
        not prompt.strip() or len(prompt) > max_chars,
        any(not (32 <= ord(c) < 127) for c in prompt),
        not answer,
        bool(answer) and len(answer) >= 3 and answer in prompt.rstrip("=:"),
    ]
    return 1.0 - sum(defects) / len(defects)


def execution_check(tasks: list[Task]) -> dict[str, tuple[str, str]]:
    """Re-run each program task's program in the sandbox (one batch): task id -> (reason, detail)
    for those whose run fails or whose value differs from the stated answer."""
    progs = [t for t in tasks if isinstance(t.params, dict) and "program" in t.params]
    out: dict[str, tuple[str, str]] = {}
    results = programs.run_programs([str(t.params["program"]) for t in progs])
    for t, res in zip(progs, results, strict=True):
        value, why = programs.gold_answer(res)
        if value is None:
            out[t.id] = (why, res.message)
        elif value != (t.answer or "").strip():
            out[t.id] = ("answer_mismatch", f"sandbox gives {value}, task states {t.answer}")
    return out


def _rederive(family: Family, task: Task, sandbox: dict[str, tuple[str, str]]) -> bool:
    """Does the gold survive a second derivation (sandbox for programs, else the reference)?"""
    if isinstance(task.params, dict) and "program" in task.params:
        return task.id not in sandbox
    try:
        return family.reference(task)[1].strip() == (task.answer or "").strip()
    except Exception:  # a task the family cannot re-derive (e.g. a file task): no confirmation
        return False


def check_tasks(
    tasks: list[Task],
    family: Family,
    cfg: ReliabilityConfig,
    model: LanguageModel | Rollouts | None = None,
    reasoner: ReasonerConfig | None = None,
    seed: int = 0,
    scorer: Scorer | None = None,
) -> tuple[list[Task], list[RejectedTask], dict[str, Any]]:
    """(kept tasks, rejected tasks, info with counts by reason) after the checks above.

    `model` (the round's current model) enables the sampled check when `cfg.samples` > 0;
    `scorer` overrides `cfg.scorer`."""
    rejects: list[RejectedTask] = []
    sandbox: dict[str, tuple[str, str]] = {}
    if cfg.execution_check:
        sandbox = execution_check(tasks)
    if scorer is None and cfg.scorer == "rule":
        scorer = rule_score
    alive: list[Task] = []
    for t in tasks:
        if t.answer is None or not str(t.answer).strip():
            rejects.append(rejected(t, "no_answer"))
        elif t.id in sandbox:
            rejects.append(rejected(t, *sandbox[t.id]))
        elif scorer is not None and (s := float(scorer(t))) < cfg.min_score:
            rejects.append(rejected(t, "low_score", f"score {s:.3f} < {cfg.min_score}"))
        else:
            alive.append(t)
    rechecked = 0
    if model is not None and cfg.samples > 0 and alive:
        base = reasoner or ReasonerConfig()
        rcfg = base.model_copy(
            update={"samples": cfg.samples, "temperature": cfg.temperature, "greedy_sample": False}
        )
        traces = solve(model, family, alive, rcfg, seed, "reliability", alive[0].round)
        answers: dict[str, list[str | None]] = {}
        for tr in traces:
            answers.setdefault(tr.task_id, []).append(tr.answer)
        kept = []
        for t in alive:
            drawn = answers.get(t.id, [])
            votes = Counter(a.strip() for a in drawn if a is not None)
            top, count = votes.most_common(1)[0] if votes else (None, 0)
            share = count / max(1, len(drawn))  # temperature 0 draws one sample
            if top is not None and top != t.answer.strip() and share >= cfg.dispute_share:
                if _rederive(family, t, sandbox):
                    rechecked += 1
                else:
                    rejects.append(
                        rejected(t, "gold_disputed", f"{share:.2f} of samples say {top}")
                    )
                    continue
            if cfg.min_agreement is not None and share < cfg.min_agreement:
                rejects.append(rejected(t, "ambiguous", f"top answer share {share:.2f}"))
                continue
            kept.append(t)
        alive = kept
    info = {
        "checked": len(tasks),
        "kept": len(alive),
        "rejected": dict(sorted(Counter(r.reason for r in rejects).items())),
        "rechecked": rechecked,
    }
    return alive, rejects, info
