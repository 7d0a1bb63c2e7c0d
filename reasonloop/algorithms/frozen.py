"""A pass without gradient over many inputs, in chunks and in eval mode: the old-policy and
reference log-probs of the RL and preference trainers, PPO's old values, and every learned
judge's scores share it. The module is given back in the mode it was in, also on an error."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

In = TypeVar("In")
Out = TypeVar("Out")


def frozen_map(
    module: torch.nn.Module,
    items: Sequence[In],
    chunk: int,
    fn: Callable[[Sequence[In]], list[Out]],
) -> list[Out]:
    """fn over `items` `chunk` at a time, with `module` in eval mode and no gradient; the
    per-chunk lists, joined in order."""
    was_training = module.training
    module.eval()
    out: list[Out] = []
    try:
        with torch.no_grad():
            for s in range(0, len(items), chunk):
                out += fn(items[s : s + chunk])
    finally:
        module.train(was_training)
    return out
