"""A generative verifier: the policy model itself judges a solution in language, then says Y or N.

Zhang et al. 2024, "Generative Verifiers: Reward Modeling as Next-Token Prediction" (GenRM:
the verdict is a next token, its probability the score, optionally after a generated critique,
GenRM-CoT); Yuan et al. 2024, "Self-Rewarding Language Models" (the same model solves and judges,
and its own judgements choose what it learns from).

Format, char-level so the tiny model can learn it (every character is printable ASCII, in the
tiny tokenizer's vocabulary):

    verification prompt   <task prompt><completion's first line>?
    target                Y | N                      (without critique)
                          <critique>|Y | <critique>|N (with critique)

The critique is the 1-based number of the first step the family's `check_step` finds wrong, or
`-` when no step is flagged (families without `check_step`, or no wrong step). Note that
`check_step` reads the task's parameters (the operands, not the gold answer); a run that must be
label-free keeps `with_critique` off.

Score = P(Y) / (P(Y) + P(N)) at the verdict position, read through the model's `logprobs`
(with critique: the critique is generated greedily first, parsed defensively, and the verdict
read after it). Normalising over the two verdict tokens rather than using the raw P(Y) keeps a
model that puts some mass on other characters from looking unsure; `verdict_logprobs` gives the
raw values. Training is SFT on `SFTExample`s (`verification_examples`) mixed into the policy's own
training set, so one model learns both roles (under iterative DPO, as pairs of the right verdict
over the wrong one, `verification_pairs`). Round 0's reference traces are all right, so its
negatives are made by changing one digit of a reference completion and labelling the result
with the family's verifier (`corrupted_items`); later rounds use the round's own verdicts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from reasonloop.evaluator.step_corruption import change_digit
from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.tasks.base import Family
from reasonloop.types import Judgement, PreferencePair, SFTExample, Task, Trace

EVALUATOR_ID = "generative"
VERIFY_MARK = "?"
"""Ends the verification prompt: "is this right?"."""
CRITIQUE_END = "|"
YES = "Y"
NO = "N"
NO_FLAG = "-"
"""The critique when no step is flagged."""
MAX_CRITIQUE_CHARS = 3
"""A critique is `-` or a step number of at most this many digits."""


def verification_prompt(prompt: str, completion: str) -> str:
    """The prompt that asks the model to judge `completion` (its first line only) for `prompt`."""
    return prompt + completion.split("\n", 1)[0] + VERIFY_MARK


def verification_target(verdict: bool, critique: str | None = None) -> str:
    """What the model should write after the verification prompt."""
    mark = YES if verdict else NO
    return mark if critique is None else f"{critique}{CRITIQUE_END}{mark}"


def parse_critique(text: Any) -> str | None:
    """The critique at the start of generated `text` (up to `|`): `-` or a step number >= 1.
    None for anything else (no `|`, empty, letters, too long, not a string)."""
    if not isinstance(text, str):
        return None
    line = text.split("\n", 1)[0]
    if CRITIQUE_END not in line:
        return None
    head = line.split(CRITIQUE_END, 1)[0].strip()
    if head == NO_FLAG:
        return head
    if head.isascii() and head.isdigit() and len(head) <= MAX_CRITIQUE_CHARS and int(head) >= 1:
        return str(int(head))
    return None


def parse_verdict(text: Any) -> tuple[str | None, bool | None]:
    """(critique, verdict) of a generated verification: the inverse of `verification_target`.

    Either part is None when absent or malformed; never raises."""
    if not isinstance(text, str):
        return None, None
    line = text.split("\n", 1)[0]
    critique = parse_critique(line)
    rest = line.split(CRITIQUE_END, 1)[1] if CRITIQUE_END in line else line
    mark = rest.strip()
    return critique, (True if mark == YES else False if mark == NO else None)


def step_critique(family: Family, task: Task, steps: Sequence[Any]) -> str:
    """The 1-based number of the first step `check_step` finds wrong, else `-`."""
    check = getattr(family, "check_step", None)
    if check is None:
        return NO_FLAG
    for i, step in enumerate(steps, 1):
        if check(task, step) is False:
            return str(i)
    return NO_FLAG


def corrupted_items(
    family: Family, tasks: dict[str, Task], traces: Sequence[Trace], rng: random.Random
) -> list[tuple[Task, str, bool]]:
    """(task, completion, verdict) for each trace and a copy with one digit changed, each
    labelled by the family's verifier (a changed step digit can leave the answer right).

    For round 0, whose reference traces are all right: the verifier's negatives. A completion
    without digits gives no corrupted copy."""
    out: list[tuple[Task, str, bool]] = []
    for t in traces:
        task = tasks.get(t.task_id)
        if task is None:
            continue
        text = t.text.split("\n", 1)[0]
        out.append((task, text, family.verify(task, family.parse(text)[1]) == 1.0))
        bad = change_digit(text, rng)
        if bad is None:
            continue
        out.append((task, bad, family.verify(task, family.parse(bad)[1]) == 1.0))
    return out


def judged_items(
    tasks: dict[str, Task], traces: Sequence[Trace], judgements: Sequence[Judgement]
) -> list[tuple[Task, str, bool]]:
    """(task, completion, verdict) of each judged, un-hinted trace (a hinted trace answers a
    prompt with the answer shown, which is not what the verifier will be asked)."""
    verdict = {j.trace_id: j.verdict for j in judgements if j.level == "outcome"}
    return [
        (tasks[t.task_id], t.text, bool(verdict[t.id]))
        for t in traces
        if verdict.get(t.id) is not None and t.task_id in tasks and not t.decoding.get("hint")
    ]


def verification_examples(
    items: Sequence[tuple[Task, str, bool]],
    family: Family,
    with_critique: bool,
    limit: int,
    rng: random.Random,
    rnd: int,
) -> list[SFTExample]:
    """At most `limit` verification SFT examples from (task, completion, verdict) items, distinct
    per (task, completion), as balanced between Y and N as the items allow (half each, the rest
    filled from the larger class), in a shuffled order."""
    seen: set[tuple[str, str]] = set()
    pos: list[tuple[Task, str, bool]] = []
    neg: list[tuple[Task, str, bool]] = []
    for task, text, ok in items:
        key = (task.id, text.split("\n", 1)[0])
        if key in seen:
            continue
        seen.add(key)
        (pos if ok else neg).append((task, key[1], ok))
    rng.shuffle(pos)
    rng.shuffle(neg)
    half = limit // 2
    take_pos = min(len(pos), max(half, limit - len(neg)))
    take_neg = min(len(neg), limit - take_pos)
    chosen = pos[:take_pos] + neg[:take_neg]
    rng.shuffle(chosen)
    out = []
    for task, text, ok in chosen:
        critique = step_critique(family, task, family.parse(text)[0]) if with_critique else None
        out.append(
            SFTExample(
                prompt=verification_prompt(task.prompt, text),
                completion=verification_target(ok, critique) + "\n",
                task_id=task.id,
                trace_id="",
                round=rnd,
            )
        )
    return out


def verification_pairs(examples: Sequence[SFTExample]) -> list[PreferencePair]:
    """Each verification example as a preference pair: its verdict over the opposite one (same
    critique), so a preference-trained policy (iterative DPO) learns to verify too. Examples
    whose target does not parse are skipped."""
    out = []
    for ex in examples:
        critique, verdict = parse_verdict(ex.completion)
        if verdict is None:
            continue
        out.append(
            PreferencePair(
                prompt=ex.prompt,
                chosen=verification_target(verdict, critique),
                rejected=verification_target(not verdict, critique),
                level="outcome",
                task_id=ex.task_id,
                round=ex.round,
            )
        )
    return out


class GenerativeVerifier:
    """Scores (prompt, completion) pairs by the model's own P(Y) after a verification prompt."""

    def __init__(self, model: LanguageModel, with_critique: bool = False) -> None:
        self.model = model
        self.with_critique = with_critique
        config = getattr(model, "config", None)
        self.max_seq_len: int | None = getattr(config, "max_seq_len", None)

    def _fits(self, vprompt: str) -> bool:
        # bos + prompt + critique + `|` + verdict must fit the context.
        extra = 1 + (MAX_CRITIQUE_CHARS + 1 if self.with_critique else 0) + 1
        return self.max_seq_len is None or len(vprompt) + extra <= self.max_seq_len

    def critiques(self, vprompts: list[str]) -> list[str]:
        """Greedy critiques, parsed defensively (`-` when the model writes no valid one)."""
        if not vprompts:
            return []
        greedy = Sampling(temperature=0.0, max_new_tokens=MAX_CRITIQUE_CHARS + 1)
        out = self.model.generate(vprompts, 1, greedy)
        # Generation stops at a newline, not at `|`: the text may run on into a verdict.
        return [parse_critique(c[0].text + CRITIQUE_END) or NO_FLAG for c in out]

    def verdict_logprobs(self, vprompts: list[str]) -> list[tuple[float, float]]:
        """(log P(Y), log P(N)) at the end of each verification prompt (critique included)."""
        if not vprompts:
            return []
        yes = self.model.logprobs(vprompts, [YES] * len(vprompts))
        no = self.model.logprobs(vprompts, [NO] * len(vprompts))
        return [(float(a[0]), float(b[0])) for a, b in zip(yes, no, strict=True)]

    def judge(self, prompts: Sequence[str], completions: Sequence[str]) -> list[tuple[float, str]]:
        """(P(Y) / (P(Y) + P(N)), critique) per pair; a pair too long for the model's context
        scores 0.0 (unverifiable is not accepted) with critique ``."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        vprompts = [verification_prompt(p, c) for p, c in zip(prompts, completions, strict=True)]
        fit = [i for i, v in enumerate(vprompts) if self._fits(v)]
        asked = [vprompts[i] for i in fit]
        crit = self.critiques(asked) if self.with_critique else [""] * len(asked)
        if self.with_critique:
            asked = [v + c + CRITIQUE_END for v, c in zip(asked, crit, strict=True)]
        out: list[tuple[float, str]] = [(0.0, "")] * len(vprompts)
        for i, (ly, ln), c in zip(fit, self.verdict_logprobs(asked), crit, strict=True):
            out[i] = (1.0 / (1.0 + math.exp(max(min(ln - ly, 60.0), -60.0))), c)
        return out

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """P(right) per (prompt, completion): a `reasoner.search.Scorer`."""
        return [p for p, _ in self.judge(prompts, completions)]


def judge_generative(
    verifier: GenerativeVerifier,
    tasks: dict[str, Task],
    traces: list[Trace],
    rnd: int,
    threshold: float = 0.5,
) -> list[Judgement]:
    """Outcome judgements by the model itself: verdict = score >= `threshold`, the generated
    critique (if any) kept as the judgement's critique. No gold answer is read."""
    results = verifier.judge([tasks[t.task_id].prompt for t in traces], [t.text for t in traces])
    return [
        Judgement(t.id, EVALUATOR_ID, "outcome", [p], verdict=p >= threshold, critique=c, round=rnd)
        for t, (p, c) in zip(traces, results, strict=True)
    ]
