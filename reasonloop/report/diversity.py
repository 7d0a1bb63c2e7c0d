"""How varied a round's tasks are: the share of distinct prompts, and the mean pairwise
character-3-gram Jaccard distance over a fixed-seed sample of prompts (0 = all alike, 1 = no
3-gram shared). Cheap, model-free, and comparable across rounds of one family. The same
similarity finds near-duplicate tasks for the Task Creator to drop (`near_duplicates`)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence


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
            total += 1 - jaccard(a, b)
            pairs += 1
    return total / pairs


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def near_duplicates(
    prompts: Sequence[str], previous: Iterable[str] = (), threshold: float = 0.8, n: int = 3
) -> dict[int, str]:
    """Which of `prompts` to drop, by index, with the reason: a prompt whose character-n-gram
    Jaccard similarity to an earlier kept prompt of the same list, or to any of `previous`,
    exceeds `threshold`. Greedy in list order, so the first of a group of near-duplicates stays.

    An inverted index from grams to prompts means only prompts sharing a gram are compared, so
    a round of distinct prompts costs far less than all pairs.
    """
    index: dict[str, list[int]] = {}
    grams: list[frozenset[str]] = []

    def add(g: frozenset[str]) -> None:
        grams.append(g)
        for gram in g:
            index.setdefault(gram, []).append(len(grams) - 1)

    for p in previous:
        add(char_ngrams(p, n))
    n_previous = len(grams)
    dropped: dict[int, str] = {}
    for i, p in enumerate(prompts):
        g = char_ngrams(p, n)
        shared = Counter(j for gram in g for j in index.get(gram, ()))
        best, best_j = 0.0, -1
        for j, common in shared.items():
            sim = common / (len(g) + len(grams[j]) - common)
            if sim > best:
                best, best_j = sim, j
        if best > threshold:
            where = "an earlier round" if best_j < n_previous else "this round"
            dropped[i] = f"near-duplicate of a task of {where} (jaccard {best:.2f})"
        else:
            add(g)
    return dropped
