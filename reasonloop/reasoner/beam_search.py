"""Step-level beam search guided by a step scorer (Yao et al. 2023's BFS over thoughts; the
PRM-guided beam search of Snell et al. 2024 "Scaling LLM test-time compute").

Every task keeps up to `beam_width` partial solutions. Each round, every unfinished beam of every
task is extended by `expansions` sampled next steps in ONE proposer call, the new partial
traces are scored by the step scorer in ONE call (their step scores aggregated: `last` reads a
PRM's value of the newest step, `min` the weakest step so far), and the `beam_width` best
candidates of each task survive. A candidate that wrote its final answer leaves the beam (the
beam narrows) and joins the task's finished pool; the search stops when no beam is left or after
`max_steps` rounds, and returns the best-scoring finished trace.

Our choices: identical candidate texts are merged before scoring (duplicates would crowd a beam
with one idea); every finished candidate joins the pool, even one ranked below the top
`beam_width` (it is already paid for and scored); ties keep generation order. Cost is counted in
generated tokens and step samples, so a search can be compared to N full samples at equal
budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from reasonloop.evaluator.process_reward_model import aggregate
from reasonloop.reasoner.step_search import (
    Propose,
    StepScorer,
    is_finished,
    split_steps,
)


@dataclass
class BeamResult:
    """One task's search: the chosen trace and what the search cost."""

    text: str | None
    """The best finished completion (None when no beam finished within max_steps)."""
    answer: str | None
    score: float
    """Its aggregated step score (the best unfinished one's when nothing finished)."""
    tokens: int = 0
    """Tokens generated for this task, all candidates included."""
    samples: int = 0
    """Step samples drawn for this task (beams x expansions per round, summed)."""
    finished: list[tuple[str, float]] = field(default_factory=list)
    """Every distinct finished candidate with its score, in the order found."""


def check_beam_args(beam_width: int, expansions: int, max_steps: int) -> None:
    for name, value in (
        ("beam_width", beam_width),
        ("expansions", expansions),
        ("max_steps", max_steps),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"beam search {name} must be an int >= 1, got {value!r}")


def beam_search(
    prompts: Sequence[str],
    propose: Propose,
    step_scorer: StepScorer,
    beam_width: int = 4,
    expansions: int = 4,
    max_steps: int = 16,
    how: str = "last",
) -> list[BeamResult]:
    """Beam search over steps for every prompt at once (see the module docstring)."""
    check_beam_args(beam_width, expansions, max_steps)
    aggregate([], how)  # rejects an unknown aggregate before any generation
    results = [BeamResult(None, None, float("-inf")) for _ in prompts]
    beams: list[list[str]] = [[""] for _ in prompts]  # partial completions, best first
    best_open: list[tuple[str, float] | None] = [None] * len(prompts)
    for _ in range(max_steps):
        live = [(i, b) for i, bs in enumerate(beams) for b in bs]
        if not live:
            break
        outs = propose([prompts[i] + b for i, b in live], expansions)
        if len(outs) != len(live):
            raise ValueError(f"proposer returned {len(outs)} lists for {len(live)} contexts")
        cands: list[list[str]] = [[] for _ in prompts]
        seen: list[set[str]] = [set() for _ in prompts]
        for (i, b), comps in zip(live, outs, strict=True):
            results[i].samples += len(comps)
            for c in comps:
                results[i].tokens += c.n_tokens
                text = b + c.text
                if text not in seen[i]:
                    seen[i].add(text)
                    cands[i].append(text)
        flat = [(i, t) for i, ts in enumerate(cands) for t in ts]
        step_scores = step_scorer([prompts[i] for i, _ in flat], [t for _, t in flat])
        if len(step_scores) != len(flat):
            raise ValueError(f"step scorer returned {len(step_scores)} lists for {len(flat)}")
        scored: list[list[tuple[str, float]]] = [[] for _ in prompts]
        for (i, t), s in zip(flat, step_scores, strict=True):
            scored[i].append((t, aggregate(s, how)))
        for i, cs in enumerate(scored):
            for t, s in cs:
                if is_finished(t):
                    results[i].finished.append((t, s))
            ranked = sorted(cs, key=lambda ts: -ts[1])[:beam_width]  # stable: ties keep order
            beams[i] = [t for t, _ in ranked if not is_finished(t)]
            if beams[i] and (best_open[i] is None or ranked[0][1] > best_open[i][1]):
                best_open[i] = next((t, s) for t, s in ranked if not is_finished(t))
    for i, r in enumerate(results):
        if r.finished:
            text, score = max(r.finished, key=lambda ts: ts[1])  # first of the best on ties
            r.text, r.answer, r.score = text, split_steps(text)[1], score
        elif best_open[i] is not None:
            r.score = best_open[i][1]
    return results
