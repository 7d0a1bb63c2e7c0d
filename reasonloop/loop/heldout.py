"""The fixed held-out yardstick: the same tasks every round, never trained on.

pass@1 is greedy; with `samples` > 0, maj@k (majority answer right) and pass@k (any sample right)
are added. Every figure is given overall and per difficulty level. Given a `scorer` (a learned
reward model), the same k samples also give bon@k (its best-scored sample right), weighted_maj@k
(the answer with the largest summed score right) and its calibration against the gold verdicts
(AUROC, ECE): the same samples, so the columns differ only by how they select.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from reasonloop.config import TasksConfig
from reasonloop.evaluator.calibration import auroc, ece
from reasonloop.evaluator.consensus import majority_vote
from reasonloop.models.base import Completion, LanguageModel, Sampling
from reasonloop.models.rollouts import Rollouts, as_rollouts
from reasonloop.reasoner.search import Scorer, best_of_n, weighted_majority_vote
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
    scorer: Scorer | None = None,
    scorer_name: str = "orm",
    scorers: dict[str, Scorer] | None = None,
    cut_has_no_answer: bool = False,
) -> dict:
    """Held-out metrics of `model`, generating in this process, or over workers when given
    `Rollouts` (the same figures either way). With `scorer` and `samples` > 0, also bon@k,
    weighted_maj@k and `calibration: {scorer_name: {auroc, ece, n, positives}}`. Each of the
    further `scorers` adds only its own `calibration: {name: {auroc, ece, n, positives,
    bon@k}}`, on the same samples. With `cut_has_no_answer`, a completion cut by the token
    budget has no answer (wrong at pass@1, no vote in maj@k), as in the rounds."""
    gen = as_rollouts(model)

    def read(c: Completion) -> str | None:  # as in a round: a cut sample has no answer
        return None if cut_has_no_answer and not c.stopped else family.parse(c.text)[1]

    prompts = [t.prompt for t in tasks]
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    p1: dict[int, list[bool]] = defaultdict(list)
    majk: dict[int, list[bool]] = defaultdict(list)
    passk: dict[int, list[bool]] = defaultdict(list)
    bonk: dict[int, list[bool]] = defaultdict(list)
    wmajk: dict[int, list[bool]] = defaultdict(list)
    all_scores: list[float] = []
    all_oks: list[bool] = []
    tokens = 0
    for t, comps in zip(tasks, gen.generate(prompts, 1, greedy, batch_size), strict=True):
        tokens += comps[0].n_tokens
        p1[t.difficulty].append(family.verify(t, read(comps[0])) == 1.0)
    if samples > 0:
        s = Sampling(temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
        sampled = gen.generate(prompts, samples, s, batch_size)
        flat_scores: list[float] = []
        if scorer is not None:  # one call over every sample: the scorer batches them itself
            flat_scores = scorer(
                [t.prompt for t, comps in zip(tasks, sampled, strict=True) for _ in comps],
                [c.text for comps in sampled for c in comps],
            )
        at = 0
        for t, comps in zip(tasks, sampled, strict=True):
            tokens += sum(c.n_tokens for c in comps)
            answers = [read(c) for c in comps]
            oks = [family.verify(t, a) == 1.0 for a in answers]
            winner, _ = majority_vote(answers)
            majk[t.difficulty].append(family.verify(t, winner) == 1.0)
            passk[t.difficulty].append(any(oks))
            if scorer is not None:
                scores = [float(x) for x in flat_scores[at : at + len(comps)]]
                at += len(comps)
                all_scores += scores
                all_oks += oks
                bon = best_of_n(answers, scores)[0]
                bonk[t.difficulty].append(family.verify(t, bon) == 1.0)
                wmaj = weighted_majority_vote(answers, scores)[0]
                wmajk[t.difficulty].append(family.verify(t, wmaj) == 1.0)
    out = {"pass@1": _overall(p1), "by_level": _rates(p1), "tokens": tokens}
    if samples > 0:
        out |= {
            f"maj@{samples}": _overall(majk),
            f"maj@{samples}_by_level": _rates(majk),
            f"pass@{samples}": _overall(passk),
            f"pass@{samples}_by_level": _rates(passk),
        }
        if scorer is not None:
            out |= {
                f"bon@{samples}": _overall(bonk),
                f"bon@{samples}_by_level": _rates(bonk),
                f"weighted_maj@{samples}": _overall(wmajk),
                f"weighted_maj@{samples}_by_level": _rates(wmajk),
                "calibration": {
                    scorer_name: {
                        "auroc": auroc(all_scores, all_oks),
                        "ece": ece(all_scores, all_oks),
                        "n": len(all_oks),
                        "positives": sum(all_oks),
                    }
                },
            }
        if scorers:
            calibration = out.setdefault("calibration", {})
            for name, extra in scorers.items():
                calibration[name] = _calibration(extra, family, tasks, sampled, samples)
    return out


def _calibration(scorer: Scorer, family: Family, tasks: list[Task], sampled, samples: int) -> dict:
    """One further scorer's AUROC, ECE and bon@k on the held-out samples already drawn."""
    scores = scorer(
        [t.prompt for t, comps in zip(tasks, sampled, strict=True) for _ in comps],
        [c.text for comps in sampled for c in comps],
    )
    oks: list[bool] = []
    bon: list[bool] = []
    at = 0
    for t, comps in zip(tasks, sampled, strict=True):
        answers = [family.parse(c.text)[1] for c in comps]
        oks += [family.verify(t, a) == 1.0 for a in answers]
        picked = best_of_n(answers, [float(x) for x in scores[at : at + len(comps)]])[0]
        bon.append(family.verify(t, picked) == 1.0)
        at += len(comps)
    return {
        "auroc": auroc(scores, oks),
        "ece": ece(scores, oks),
        "n": len(oks),
        "positives": sum(oks),
        f"bon@{samples}": sum(bon) / len(bon) if bon else 0.0,
    }
