"""The fixed held-out yardstick: the same tasks every round, never trained on.

pass@1 is greedy; with `samples` > 0, maj@k (majority answer right) and pass@k (any sample right)
are added. Every figure is given overall and per difficulty level.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from reasonloop.config import TasksConfig
from reasonloop.evaluator.consensus import majority_vote
from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.tasks.base import Family
from reasonloop.types import Task


def make_heldout(family: Family, cfg: TasksConfig) -> list[Task]:
    """`heldout_per_level` distinct tasks per level, drawn with the held-out seed.

    A level with few distinct tasks (1-digit addition has 100) would otherwise be held out
    whole and never trained on: when 4x as many draws as wanted find fewer than twice the
    wanted number of distinct tasks, only half of what was found is held out."""
    rng = random.Random(cfg.heldout_seed)
    out: dict[str, Task] = {}
    for level in cfg.heldout_levels:
        seen: dict[str, Task] = {}
        for _ in range(cfg.heldout_per_level * 4):
            t = family.make(rng, level)
            seen.setdefault(t.id, t)
        want = cfg.heldout_per_level if len(seen) >= 2 * cfg.heldout_per_level else len(seen) // 2
        for t in list(seen.values())[:want]:
            out.setdefault(t.id, replace(t, split="heldout"))
    return list(out.values())


def _rates(correct: dict[int, list[bool]]) -> dict[str, float]:
    return {str(lv): sum(v) / len(v) for lv, v in sorted(correct.items()) if v}


def _overall(correct: dict[int, list[bool]]) -> float:
    flat = [x for v in correct.values() for x in v]
    return sum(flat) / len(flat) if flat else 0.0


def evaluate(
    model: LanguageModel,
    family: Family,
    tasks: list[Task],
    max_new_tokens: int,
    samples: int = 0,
    seed: int = 0,
    batch_size: int = 512,
) -> dict:
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    p1: dict[int, list[bool]] = defaultdict(list)
    majk: dict[int, list[bool]] = defaultdict(list)
    passk: dict[int, list[bool]] = defaultdict(list)
    tokens = 0
    per_call = max(1, batch_size // max(1, samples))
    for i in range(0, len(tasks), batch_size):
        chunk = tasks[i : i + batch_size]
        for t, comps in zip(
            chunk, model.generate([t.prompt for t in chunk], 1, greedy), strict=True
        ):
            tokens += comps[0].n_tokens
            p1[t.difficulty].append(family.verify(t, family.parse(comps[0].text)[1]) == 1.0)
    if samples > 0:
        for i in range(0, len(tasks), per_call):
            chunk = tasks[i : i + per_call]
            s = Sampling(temperature=1.0, max_new_tokens=max_new_tokens, seed=seed * 7919 + i)
            for t, comps in zip(
                chunk, model.generate([t.prompt for t in chunk], samples, s), strict=True
            ):
                tokens += sum(c.n_tokens for c in comps)
                answers = [family.parse(c.text)[1] for c in comps]
                oks = [family.verify(t, a) == 1.0 for a in answers]
                winner, _ = majority_vote(answers)
                majk[t.difficulty].append(family.verify(t, winner) == 1.0)
                passk[t.difficulty].append(any(oks))
    out = {"pass@1": _overall(p1), "by_level": _rates(p1), "tokens": tokens}
    if samples > 0:
        out |= {
            f"maj@{samples}": _overall(majk),
            f"maj@{samples}_by_level": _rates(majk),
            f"pass@{samples}": _overall(passk),
            f"pass@{samples}_by_level": _rates(passk),
        }
    return out
