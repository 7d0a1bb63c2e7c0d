"""Corrupted-step negatives for a process reward model: copies of well-labelled traces with one
digit of one step changed, that step and everything after it labelled bad.

Why: Monte-Carlo labels (`math_shepherd.py`) call a step good when some rollout from it still
reaches the gold answer. A policy that re-reads the operands recovers from most slips (a
miscopied digit, a column total off by one that the next column does not use), so those steps
are labelled good, and a PRM trained on them alone learns not to flag them. A random digit edit
of a step on a right path is a wrong step with no rollouts to ask: in an arithmetic step
(`x+y+c=t`) any single changed digit breaks the equation. The edit needs no step checker, so
it is label-free beyond the verdict and the MC labels the trace already has. Measured on
`benchmarks/search.py` (3 seeds): first-error localisation 62% -> 94% on injected errors and
61% -> 87% on the policy's own wrong samples (docs/benchmarks.md).

The changed step is one of the trace's leading steps labelled >= `good` (those before its first
bad label): a step the MC labels already fault needs no made-up negative, and one after it has
no sound prefix. The final answer is left as written, so the PRM cannot read the error off the
answer; its place is labelled 0 with the steps after the edit (a solution with a wrong step is
not a sound one).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from reasonloop.reasoner.format import ANSWER_MARK, STEP_SEP


def change_digit(text: str, rng: random.Random) -> str | None:
    """`text` with one of its digits (drawn from `rng`) replaced by another digit (drawn next);
    None when it has no digit. The one digit edit the PRM's copies, the generative verifier's
    round-0 negatives and the corrector's wrong answers share."""
    digits = [i for i, ch in enumerate(text) if ch.isdigit()]
    if not digits:
        return None
    i = rng.choice(digits)
    new = rng.choice([d for d in "0123456789" if d != text[i]])
    return text[:i] + new + text[i + 1 :]


def corrupt(completion: str, rng: random.Random, stop: int | None = None) -> tuple[str, int] | None:
    """`completion` (`step;...;step#answer`) with one digit of one step changed to another:
    (text, index of the changed step, counting non-empty steps as `format.parse` does). The step
    is drawn among those before index `stop` that hold a digit; None when there is none."""
    # Spliced into the raw text rather than `format.parse` + `render`, which would also drop
    # empty steps and strip the answer: the copy differs from the original in one character.
    line, nl, rest = completion.partition("\n")
    if ANSWER_MARK not in line:
        return None
    body, _, answer = line.rpartition(ANSWER_MARK)
    steps = body.split(STEP_SEP)
    real = [i for i, s in enumerate(steps) if s]  # raw index of the k-th non-empty step
    end = len(real) if stop is None else min(stop, len(real))
    with_digits = [k for k in range(end) if any(ch.isdigit() for ch in steps[real[k]])]
    if not with_digits:
        return None
    k = rng.choice(with_digits)
    steps[real[k]] = change_digit(steps[real[k]], rng)  # type: ignore[assignment]
    return STEP_SEP.join(steps) + ANSWER_MARK + answer + nl + rest, k


def with_corruptions(
    prompts: Sequence[str],
    completions: Sequence[str],
    labels: Sequence[Sequence[float]],
    share: float,
    rng: random.Random,
    good: float = 0.5,
) -> tuple[list[str], list[str], list[list[float]], int]:
    """The training set plus, for a `share` of its traces that start with a step labelled
    >= `good`, a copy with one digit of one of those leading good steps changed: (prompts,
    completions, labels, copies added). A copy's labels are the original's before the changed
    step and 0 from it on (the answer's place included)."""
    if not 0 <= share <= 1:
        raise ValueError(f"corruption share must be in [0, 1], got {share}")
    if not len(prompts) == len(completions) == len(labels):
        raise ValueError(
            f"{len(prompts)} prompts, {len(completions)} completions, {len(labels)} label lists"
        )
    ps, cs = list(prompts), list(completions)
    ys = [[float(y) for y in row] for row in labels]
    added = 0
    for p, c, y in zip(prompts, completions, labels, strict=True):
        # The steps' labels are all but the last (the answer's place).
        sound = next((i for i, v in enumerate(y[:-1]) if v < good), len(y) - 1)
        if sound == 0 or rng.random() >= share:
            continue
        made = corrupt(c, rng, sound)
        if made is None:
            continue
        text, k = made
        ps.append(p)
        cs.append(text)
        ys.append([float(v) for v in y[:k]] + [0.0] * (len(y) - k))
        added += 1
    return ps, cs, ys, added
