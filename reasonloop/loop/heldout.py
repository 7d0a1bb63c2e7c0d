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
from reasonloop.models.rollouts import Rollouts, as_rollouts
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
    model: LanguageModel | Rollouts,
    family: Family,
    tasks: list[Task],
    max_new_tokens: int,
    samples: int = 0,
    seed: int = 0,
    batch_size: int = 512,
) -> dict:
    """Held-out metrics of `model`, generating in this process, or over workers when given
    `Rollouts` (the same figures either way)."""
    gen = as_rollouts(model)
    prompts = [t.prompt for t in tasks]
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    p1: dict[int, list[bool]] = defaultdict(list)
    majk: dict[int, list[bool]] = defaultdict(list)
    passk: dict[int, list[bool]] = defaultdict(list)
    tokens = 0
    for t, comps in zip(tasks, gen.generate(prompts, 1, greedy, batch_size), strict=True):
        tokens += comps[0].n_tokens
        p1[t.difficulty].append(family.verify(t, family.parse(comps[0].text)[1]) == 1.0)
    if samples > 0:
        s = Sampling(temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
        for t, comps in zip(tasks, gen.generate(prompts, samples, s, batch_size), strict=True):
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
