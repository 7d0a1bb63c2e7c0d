"""The Task Creator: draws each round's tasks around a difficulty frontier, and moves the
frontier up once the Reasoner masters it (a minimal curriculum)."""

from __future__ import annotations

import random
from collections.abc import Collection

from reasonloop.config import CreatorConfig
from reasonloop.tasks.base import Family
from reasonloop.types import Task


def frontier_levels(family: Family, frontier: int, cfg: CreatorConfig) -> list[int]:
    top = cfg.max_level if cfg.max_level is not None else max(family.levels)
    levels = [
        lv for lv in family.levels if frontier <= lv < frontier + cfg.levels_ahead and lv <= top
    ]
    return levels or [min(max(family.levels), top)]


def propose(
    family: Family,
    rng: random.Random,
    n: int,
    levels: list[int],
    review_levels: list[int],
    cfg: CreatorConfig,
    exclude: Collection[str] = (),
    rnd: int = 0,
) -> list[Task]:
    """`n` distinct tasks: most at `levels`, a `review_share` from `review_levels`.

    Tasks whose id is in `exclude` (the held-out set) are never proposed. Small levels may hold
    fewer than `n` distinct tasks; after a bounded number of draws we return what we have.
    """
    tasks: dict[str, Task] = {}
    n_review = int(round(n * cfg.review_share)) if review_levels else 0
    for count, pool in ((n - n_review, levels), (n_review, review_levels)):
        target = len(tasks) + count
        tries = 0
        while len(tasks) < target and tries < 20 * count + 100:
            tries += 1
            t = family.make(rng, rng.choice(pool))
            if t.id in exclude or t.id in tasks:
                continue
            t.round = rnd
            tasks[t.id] = t
    return list(tasks.values())


def next_frontier(frontier: int, success: float, cfg: CreatorConfig, family: Family) -> int:
    """Move up by `step` when the success at the frontier reaches `mastery`."""
    if success < cfg.mastery:
        return frontier
    top = cfg.max_level if cfg.max_level is not None else max(family.levels)
    return min(frontier + cfg.step, top)
