"""A toy step environment for search tests: a fixed tree of next steps with known step values.

From the empty completion the steps are `a;`, `b;` or the final `c#1`; and so on below. A step's
value is fixed; a path's score under `min` is its weakest step. The best finished path is
`b;z#3` (min 0.5), but the greedy first step is `a;` (0.6, the best single step), whose best
finished path `a;y#2` scores only 0.4: a search that looks one step ahead is fooled.
"""

from __future__ import annotations

from reasonloop.models.base import Completion
from reasonloop.reasoner.step_search import split_steps

NEXT = {
    "": ["a;", "b;", "c#1"],
    "a;": ["x;", "y#2"],
    "b;": ["z#3", "w#4"],
    "a;x;": ["q#5"],
}
VALUE = {"a": 0.6, "b": 0.5, "c": 0.2, "x": 0.3, "y": 0.4, "z": 0.9, "w": 0.1, "q": 0.3}
BEST = "b;z#3"
PROMPT = "?"


def propose(contexts: list[str], m: int) -> list[list[Completion]]:
    """The next steps of each context in a fixed order, cycling when m exceeds them."""
    out = []
    for c in contexts:
        options = NEXT[c[len(PROMPT) :]]
        out.append(
            [
                Completion(options[j % len(options)], len(options[j % len(options)]))
                for j in range(m)
            ]
        )
    return out


def step_scorer(prompts: list[str], completions: list[str]) -> list[list[float]]:
    """The fixed value of each step, the final one (`y` of `a;y#2`) included."""
    return [[VALUE[s[0]] for s in split_steps(c)[0]] for c in completions]
