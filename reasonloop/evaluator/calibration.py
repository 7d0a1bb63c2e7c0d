"""How well a judge's scores agree with ground truth: pure functions over plain lists.

- `auroc`: the probability that a random right trace scores above a random wrong one (ties count
  half), i.e. ranking quality, independent of the scores' scale. None when one class is absent,
  since the quantity is undefined there (sklearn raises; a loop metric should not).
- `ece`: expected calibration error with equal-width bins, each bin weighted by its share of the
  samples: whether a score of 0.8 means right 80% of the time. Needs probabilities in [0, 1].
- `first_error_accuracy`: for step-level judges, the share of wrong traces whose first flagged
  step is the first truly wrong step.
- `first_error_chance`: the same share for a uniform guess among a trace's steps (its baseline).
"""

from __future__ import annotations

from collections.abc import Sequence


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks with ties given their average rank (the Mann-Whitney convention)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    return ranks


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `scores` for the positive `labels`, from ranks in
    O(n log n) (Mann-Whitney U / (n_pos * n_neg)); ties count half. None without both classes."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _ranks([float(s) for s in scores])
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def ece(probs: Sequence[float], labels: Sequence[bool], bins: int = 10) -> float | None:
    """Expected calibration error: sum over equal-width bins of (bin share) * |mean prob - accuracy|.

    Bin b holds probabilities in [b/bins, (b+1)/bins), the last bin also holds 1.0. None when
    there are no samples."""
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities but {len(labels)} labels")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if not probs:
        return None
    total = [0.0] * bins
    hits = [0.0] * bins
    count = [0] * bins
    for p, y in zip(probs, labels, strict=True):
        p = float(p)
        if not 0.0 <= p <= 1.0:  # also rejects NaN: a logit passed by mistake must not pass
            raise ValueError(f"ece needs probabilities in [0, 1], got {p}")
        b = min(int(p * bins), bins - 1)
        total[b] += p
        hits[b] += 1.0 if y else 0.0
        count[b] += 1
    n = len(probs)
    return sum(abs(total[b] - hits[b]) / n for b in range(bins) if count[b])


def first_error_accuracy(
    predicted: Sequence[int | None], truth: Sequence[int | None]
) -> float | None:
    """Share of traces with a true first wrong step (`truth` not None) whose predicted first
    wrong step is exactly that step. None when no trace has a wrong step."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions but {len(truth)} truths")
    pairs = [(p, t) for p, t in zip(predicted, truth, strict=True) if t is not None]
    if not pairs:
        return None
    return sum(p == t for p, t in pairs) / len(pairs)


def first_error_chance(steps: Sequence[int]) -> float | None:
    """What `first_error_accuracy` a blind guess scores: the expected share of hits when each
    wrong trace's first wrong step is drawn uniformly from its `steps` steps (mean of 1/n).
    None for no traces; a trace with no steps cannot be located and counts as a miss."""
    if not steps:
        return None
    return sum(1.0 / n for n in steps if n > 0) / len(steps)
