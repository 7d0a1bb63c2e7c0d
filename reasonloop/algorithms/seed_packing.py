"""A packed seed: some gold examples are written after another seed problem in the same
training sequence (`p1 c1 \\n p2` -> `c2`, the loss on `c2` only).

Why: a model with learned abacus indices seeded on 1-5 digit numbers never sees two indices more
than 6 apart in one sequence, so nothing tells index 1 from index 8 and their embeddings come out
aligned (cosine .7-.9); at 7 digits the answer's first digit then attends to the operands' 8th
digits and the label-free rounds stop there. Packed after another problem, with each problem
shifted by its own random offset (`model.abacus_offset_per_problem`), indices up to about
`abacus_offset` + the number's length apart meet, and the learned code no longer aliases
(docs/easy-to-hard.md, sixth series). The numbers stay seed-sized: no longer problem is shown.
"""

from __future__ import annotations

import random

from reasonloop.types import SFTExample


def packed(examples: list[SFTExample], share: float, rng: random.Random) -> list[SFTExample]:
    """The same examples, a `share` of them preceded by another example's prompt and completion
    (drawn from all of them) and a newline; lineage (task, trace, round) stays the second's."""
    if not 0 <= share <= 1:
        raise ValueError(f"seed pack share must be in [0, 1], got {share}")
    if share == 0 or len(examples) < 2:
        return list(examples)
    out = []
    for ex in examples:
        if rng.random() < share:
            first = rng.choice(examples)
            prefix = first.prompt + first.completion.rstrip("\n") + "\n"
            ex = SFTExample(prefix + ex.prompt, ex.completion, ex.task_id, ex.trace_id, ex.round)
        out.append(ex)
    return out
