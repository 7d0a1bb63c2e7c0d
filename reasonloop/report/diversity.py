"""How varied a round's tasks are: the share of distinct prompts, and the mean pairwise
character-3-gram Jaccard distance over a fixed-seed sample of prompts (0 = all alike, 1 = no
3-gram shared). Cheap, model-free, and comparable across rounds of one family."""

from __future__ import annotations

import random
from collections.abc import Sequence


def char_ngrams(text: str, n: int = 3) -> frozenset[str]:
    # Short prompts ("1+2=") still need at least one gram to compare.
    return frozenset(text[i : i + n] for i in range(max(1, len(text) - n + 1)))


def distinct_share(prompts: Sequence[str]) -> float | None:
    return len(set(prompts)) / len(prompts) if prompts else None


def mean_jaccard_distance(prompts: Sequence[str], sample: int = 200, seed: int = 0) -> float | None:
    """Mean over all pairs of a sample of at most `sample` prompts: O(sample^2) set operations."""
    if len(prompts) < 2:
        return None
    chosen = list(prompts)
    if len(chosen) > sample:
        chosen = random.Random(seed).sample(chosen, sample)
    grams = [char_ngrams(p) for p in chosen]
    total, pairs = 0.0, 0
    for i, a in enumerate(grams):
        for b in grams[i + 1 :]:
            union = len(a | b)
            total += 1 - (len(a & b) / union if union else 1.0)
            pairs += 1
    return total / pairs
