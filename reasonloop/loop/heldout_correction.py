"""The corrector's effect on the held-out set: how many wrong first attempts a second attempt
fixes, and how many right ones it breaks (SCoRe's Delta i->c and Delta c->i).

For every held-out task the model makes a greedy first attempt, then a greedy second attempt
from the correction prompt with no feedback (`?`): the model is not told whether it was right,
so a corrector that rewrites every answer pays for it in `broken`. Gold answers are read only
to measure.

- `fixed`: share of wrong first attempts whose second attempt is right;
- `broken`: share of right first attempts whose second attempt is wrong;
- `n_fixed`, `n_broken`: the same as counts (the corrector helps when `n_fixed > n_broken`);
- `pass@1_first`, `pass@1_second`: held-out accuracy of the first and second attempts;
- `wrong`, `right`: how many first attempts each share is taken over;
- `by_level`: all of the above per difficulty level, because a corrector can only fix errors
  at levels the model partly solves (at a level it never solves there is nothing to fix with).
"""

from __future__ import annotations

from typing import Any

from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.models.rollouts import Rollouts, as_rollouts
from reasonloop.postprocess import correction_format as cf
from reasonloop.tasks.base import Family
from reasonloop.types import Task


def fixed_and_broken(first_right: list[bool], second_right: list[bool]) -> dict[str, float | int]:
    """The shares and counts, from aligned verdicts of first and second attempts (a share over
    no attempts is 0.0)."""
    if len(first_right) != len(second_right):
        raise ValueError(
            f"{len(first_right)} first attempts but {len(second_right)} second attempts"
        )
    wrong = [b for a, b in zip(first_right, second_right, strict=True) if not a]
    right = [b for a, b in zip(first_right, second_right, strict=True) if a]
    n = len(second_right)
    return {
        "fixed": sum(wrong) / len(wrong) if wrong else 0.0,
        "broken": sum(not b for b in right) / len(right) if right else 0.0,
        "n_fixed": sum(wrong),
        "n_broken": sum(not b for b in right),
        "pass@1_first": len(right) / n if n else 0.0,
        "pass@1_second": sum(second_right) / n if n else 0.0,
        "wrong": len(wrong),
        "right": len(right),
    }


def correction_effect(
    model: LanguageModel | Rollouts,
    family: Family,
    tasks: list[Task],
    max_new_tokens: int,
    batch_size: int = 512,
) -> dict[str, Any]:
    """`fixed_and_broken` of greedy first and second attempts on `tasks`, overall and (under
    `by_level`) per task difficulty."""
    gen = as_rollouts(model)
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    usable = [t for t in tasks if cf.MARK not in t.prompt]
    first = [c[0].text for c in gen.generate([t.prompt for t in usable], 1, greedy, batch_size)]
    prompts = [cf.build(t.prompt, f, cf.NO_FEEDBACK) for t, f in zip(usable, first, strict=True)]
    second = [c[0].text for c in gen.generate(prompts, 1, greedy, batch_size)]
    ok1 = [family.verify(t, family.parse(f)[1]) == 1.0 for t, f in zip(usable, first, strict=True)]
    ok2 = [family.verify(t, family.parse(s)[1]) == 1.0 for t, s in zip(usable, second, strict=True)]
    by_level: dict[str, Any] = {}
    for lv in sorted({t.difficulty for t in usable}):
        idx = [i for i, t in enumerate(usable) if t.difficulty == lv]
        by_level[str(lv)] = fixed_and_broken([ok1[i] for i in idx], [ok2[i] for i in idx])
    return fixed_and_broken(ok1, ok2) | {"by_level": by_level}
