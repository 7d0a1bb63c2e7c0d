"""A learned process reward model (PRM): P(this step still leads to the right answer), per step.

Built as the outcome reward model is (`evaluator/reward_model.py`): a copy of the policy's network
with a zero-initialised scalar head (so every first score is a neutral 0.5), but read at several
places of a completion instead of one: at the last token of each step (the step separator `;`,
or `#` after the last step) and at the last token of the final answer. Trained with binary
cross-entropy, masked over these places, on Monte-Carlo step labels (Math-Shepherd, Wang et al.
2024; `math_shepherd.py`), soft (the share of rollouts that reached the answer) or hard. Each
place's logit also carries a learned weight times the step's surprise (`Surprise`: the least
log-probability of its tokens under the PRM's own LM head), which lets a small model flag a step
it would not have written (`ProcessRewardModel` says why).
Lightman et al. 2023 and Wang et al. 2024 aggregate a solution's step scores by their minimum or
product; `aggregate` offers min, mean, last and product.

`step_scores(prompts, completions) -> list[list[float]]` is the step-scorer interface search
uses (beam search, MCTS): a partial completion ending at a separator (`s1;s2;`) gets one score
per finished step. `save` / `load` write and read one safetensors file (format
`reasonloop-prm`), kept as `prm.safetensors` in a round's checkpoint.

Calibration (`calibration_report`): AUROC and ECE of the aggregated score against gold verdicts,
and first-error accuracy: the share of traces with a known first wrong step (the family's
`check_step` on sampled traces, or an error injected into a reference trace) whose first step
scored below 0.5 is that step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from reasonloop.algorithms.fit import fit
from reasonloop.algorithms.frozen import frozen_map
from reasonloop.algorithms.sft import collate, encode_example
from reasonloop.algorithms.step_dpo import first_wrong_step
from reasonloop.algorithms.value_head import ScalarHead
from reasonloop.config import TrainConfig
from reasonloop.evaluator.calibration import (
    auroc,
    ece,
    first_error_accuracy,
    first_error_chance,
)
from reasonloop.reasoner.format import ANSWER_MARK, STEP_SEP
from reasonloop.tasks.base import Family
from reasonloop.types import SFTExample, Task, Trace

PRM_FILE = "prm.safetensors"
"""The PRM's file name inside a round's checkpoint directory."""
SCORE_CHUNK = 256
"""Sequences per forward when scoring."""
AGGREGATIONS = ("min", "mean", "last", "product")
Aggregation = Literal["min", "mean", "last", "product"]

Encoded = tuple[list[int], int, list[int]]
"""(token ids, prompt length, input positions of the scored places)."""


def score_places(completion: str) -> list[int]:
    """Character offsets in `completion` where a score is read: each step's separator, then the
    answer's last character. Matches `format.parse`: a completion with `#` has one place per
    non-empty step plus one for its answer; one without `#` is either steps in progress (ending
    in `;`: one place per step) or a bare answer (one place, its last character)."""
    line = completion.split("\n", 1)[0]
    if ANSWER_MARK in line:
        body_end = line.rindex(ANSWER_MARK)
        places = _separators(line[:body_end], body_end)
        if line[body_end + 1 :].strip():
            places.append(len(line.rstrip()) - 1)
        return places
    if line.endswith(STEP_SEP):
        return _separators(line[:-1], len(line) - 1)
    return [len(line.rstrip()) - 1] if line.strip() else []


def _separators(body: str, end: int) -> list[int]:
    """Offsets of the separators closing the non-empty steps of `body` (the last one closed by
    the character at `end`)."""
    # The end is tested by index, not by a sentinel character: model text may contain any
    # character (a NUL sentinel split "a\0b" into two steps where `parse` sees one).
    places, start = [], 0
    for i in range(len(body) + 1):
        if i == len(body) or body[i] == STEP_SEP:
            if i > start:
                places.append(i if i < len(body) else end)
            start = i + 1
    return places


def prm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: float | None = None,
) -> torch.Tensor:
    """Mean binary cross-entropy over the places where `mask` is set, of logits [B, U] against
    labels [B, U] in [0, 1] (soft labels allowed), in float32. An all-zero mask gives 0.

    `pos_weight` scales the label-1 part of each term (balances a set where most steps are good)."""
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    per = F.binary_cross_entropy_with_logits(
        logits.float(), labels.float(), pos_weight=weight, reduction="none"
    )
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp(min=1.0)


def aggregate(scores: Sequence[float], how: Aggregation) -> float:
    """One solution score from its step scores: the min (weakest step), mean, last, or product
    (the chance that every step is good, if independent). 0.0 for no scores: nothing vouches
    for an empty completion."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    if not scores:
        return 0.0
    if how == "min":
        return float(min(scores))
    if how == "mean":
        return float(sum(scores) / len(scores))
    if how == "last":
        return float(scores[-1])
    return float(math.prod(scores))


def first_flagged(scores: Sequence[float], n_steps: int, threshold: float = 0.5) -> int | None:
    """The first of the first `n_steps` scores below `threshold` (the PRM's first wrong step)."""
    return next((i for i, s in enumerate(scores[:n_steps]) if s < threshold), None)


SURPRISE_SCALE = 10.0
"""The surprise weight enters the logit as SURPRISE_SCALE * weight: Adam moves one scalar by
about the learning rate per step, and a useful weight (measured: 0.3-0.7 per nat) would take
thousands of steps to reach at lr 5e-4 without it."""


class Surprise(nn.Module):
    """One learned weight on a place's surprise (the least log-probability, under the PRM's own
    language-model head, of the tokens since the previous place). Zero at the start, so a fresh
    PRM scores as a plain value head does."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros((), dtype=torch.float32))

    def forward(self, least_logp: torch.Tensor) -> torch.Tensor:
        return SURPRISE_SCALE * self.weight * least_logp


class ProcessRewardModel(ScalarHead):
    """Step logits = a linear head on the backbone's hidden state at each scored place, plus a
    learned weight times the step's surprise.

    Why the surprise term: a last-layer state at a step's separator cannot see what the network
    predicted at the step's own tokens (causal attention reads earlier positions' states from
    the layer below), so a head there must recompute the step to check it, which a tiny
    network does not learn from a few thousand labelled traces (measured on 4-digit addition:
    an injected `7+0+0=10` scored 0.95 after 1500 steps on oracle labels). The least
    log-probability of the step's tokens under the copied LM head is that prediction, read
    back: a step the model would not write stands out. The backbone and its LM head train on
    with the rest, so the term is learned, not a fixed rule; or they stay frozen
    (`train_prm(train_backbone=False)`), which keeps the surprise the policy's own: in the loop,
    fine-tuning the copy with a value loss and no LM loss blurred it (the least log-probability
    under the fine-tuned head told right-answer traces with a wrong step from the rest at AUROC
    0.79, under the policy's at 0.97; docs/benchmarks.md)."""

    FORMAT = "reasonloop-prm"
    WHAT = "a process reward model"

    def __init__(self, backbone: Any, head: nn.Linear) -> None:
        super().__init__(backbone, head)
        self.surprise = Surprise().to(head.weight.device)
        self.module["surprise"] = self.surprise

    def use_surprise(self, on: bool) -> None:
        """Train the surprise weight (on) or hold it at zero and skip computing the term (off:
        the plain value-head PRM)."""
        if not on:
            with torch.no_grad():
                self.surprise.weight.zero_()
        self.surprise.weight.requires_grad_(on)

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Encoded]:
        """(token ids as SFT encodes them, prompt length, input positions of the scored places)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        tok = self.backbone.tokenizer
        out = []
        for p, c in zip(prompts, completions, strict=True):
            ids, p_len = encode_example(tok, SFTExample(prompt=p, completion=c))
            last = len(ids) - 2  # the final newline is a label only, never an input
            # The place's token is the last one of the completion's text up to it (exact for
            # the character tokenizer; the nearest token boundary for a subword one).
            pos = [min(p_len + len(tok.encode(c[: e + 1])) - 1, last) for e in score_places(c)]
            out.append((ids, p_len, pos))
        return out

    def logits(self, batch: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, U] at each row's scored places (0 past a row's own count) and their mask."""
        places, least, mask = self.features(batch)
        return self.place_logits(places, least, mask), mask

    def place_logits(
        self, places: torch.Tensor, least: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, U] from `features`' output: the head, plus the surprise term."""
        out = self.head(places).squeeze(-1)
        if least is not None:
            out = out + self.surprise(least)
        return out * mask

    def features(
        self, batch: list[Encoded]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """What the head and the surprise weight read, at each row's scored places: the
        backbone's float32 hidden states [B, U, D], the least log-probabilities [B, U] (None
        while the surprise term is off) and the places' mask [B, U]."""
        device = next(self.module.parameters()).device
        inputs, _, _, attn = collate(
            [(s, p) for s, p, _ in batch], self.backbone.tokenizer.pad_id, device
        )
        h = self.backbone.hidden_states(inputs, attn)
        width = max(1, max(len(pos) for _, _, pos in batch))
        index = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.bool)
        for r, (_, _, pos) in enumerate(batch):
            index[r, : len(pos)] = torch.tensor(pos, dtype=torch.long)
            mask[r, : len(pos)] = True
        index, mask = index.to(device), mask.to(device)
        rows = torch.arange(len(batch), device=device).unsqueeze(1)
        least = None
        if self.surprise.weight.requires_grad or float(self.surprise.weight.detach()) != 0.0:
            least = self._least_logp(h, inputs, batch, index)
        return h[rows, index].float(), least, mask

    def _least_logp(
        self, h: torch.Tensor, inputs: torch.Tensor, batch: list[Encoded], index: torch.Tensor
    ) -> torch.Tensor:
        """[B, U]: at each scored place, the least log-probability the backbone's LM head gives
        the tokens from the previous place (the prompt's end for the first) up to this one."""
        device = h.device
        # Only completion tokens are scored: gather their predicting states first, so a large
        # vocabulary costs [B, completion length, V], not [B, T, V].
        starts = [p_len for _, p_len, _ in batch]
        width = max([1] + [pos[-1] - p + 1 for _, p, pos in batch if pos])
        t_idx = torch.zeros(len(batch), width, dtype=torch.long)
        for r, (_, p, pos) in enumerate(batch):
            if pos:
                t_idx[r, : pos[-1] - p + 1] = torch.arange(p, pos[-1] + 1)
        t_idx = t_idx.clamp(min=1).to(device)
        rows = torch.arange(len(batch), device=device).unsqueeze(1)
        logits = self.backbone.lm_logits(h[rows, t_idx - 1]).float()
        tok = torch.log_softmax(logits, -1).gather(-1, inputs[rows, t_idx].unsqueeze(-1))
        tok = tok.squeeze(-1)  # [B, width]: log p of completion token p + i
        # Segment u of row r covers completion offsets (prev place, place u]; offsets are
        # relative to the prompt's end.
        offs = torch.arange(width, device=device).view(1, 1, -1)
        ends = index - torch.tensor(starts, device=device).unsqueeze(1)
        begins = torch.cat([torch.full_like(ends[:, :1], -1), ends[:, :-1]], 1)
        seg = (offs > begins.unsqueeze(-1)) & (offs <= ends.unsqueeze(-1))
        outside = torch.full_like(tok, torch.finfo(tok.dtype).max).unsqueeze(1)
        least = torch.where(seg, tok.unsqueeze(1), outside).amin(-1)
        return torch.where(seg.any(-1), least, torch.zeros_like(least))

    def step_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[float]]:
        """P(good) at each scored place of each (prompt, completion): one per step, then one for
        the final answer when there is one. No gradient, eval mode, in chunks."""

        def rows(chunk: Sequence[Encoded]) -> list[list[float]]:
            probs = torch.sigmoid(self.logits(list(chunk))[0]).tolist()
            return [row[: len(pos)] for row, (_, _, pos) in zip(probs, chunk, strict=True)]

        return frozen_map(self.module, self.encode(prompts, completions), SCORE_CHUNK, rows)

    def scorer(self, how: Aggregation) -> Callable[[list[str], list[str]], list[float]]:
        """An outcome scorer (`reasoner.search.Scorer`): the aggregated step scores."""
        return lambda ps, cs: [aggregate(s, how) for s in self.step_scores(ps, cs)]


def train_prm(
    prm: ProcessRewardModel,
    prompts: Sequence[str],
    completions: Sequence[str],
    labels: Sequence[Sequence[float]],
    cfg: TrainConfig,
    seed: int,
    balance: bool = False,
    on_step: Callable[[dict], None] | None = None,
    surprise: bool = True,
    train_backbone: bool = True,
) -> dict[str, Any]:
    """Train `prm` in place with masked BCE: `labels[i]` holds one label in [0, 1] per scored
    place of completion i (`score_places`); a pair whose count differs is skipped (counted in
    `skipped`), since its labels would land on the wrong steps.

    Steps = cfg.steps, or ceil(epochs * n / batch_size). With `balance`, places labelled >= 0.5
    are weighted n_low / n_high. `surprise` trains the surprise weight (off: held at zero).
    Without `train_backbone` only the head and the surprise weight learn: the backbone's
    features are computed once, so a step costs no forward pass, and its LM head stays the
    policy's, so the surprise term reads the policy's own token probabilities. Returns steps,
    seconds, n, places, skipped, pos_weight, surprise_weight, losses, loss_first, loss_last."""
    if not len(prompts) == len(completions) == len(labels):
        raise ValueError(
            f"{len(prompts)} prompts, {len(completions)} completions, {len(labels)} label lists"
        )
    enc = prm.encode(prompts, completions)
    keep = [i for i, (_, _, pos) in enumerate(enc) if pos and len(pos) == len(labels[i])]
    for i in keep:
        for y in labels[i]:
            if not 0.0 <= float(y) <= 1.0:
                raise ValueError(f"step labels must be in [0, 1], got {y} for completion {i}")
    seqs = [enc[i] for i in keep]
    ys = [[float(y) for y in labels[i]] for i in keep]
    flat = [y for row in ys for y in row]
    n_high = sum(y >= 0.5 for y in flat)
    info: dict[str, Any] = {
        "steps": 0,
        "seconds": 0.0,
        "n": len(seqs),
        "places": len(flat),
        "skipped": len(enc) - len(seqs),
        "pos_weight": 1.0,
        "losses": [],
        "loss_first": 0.0,
        "loss_last": 0.0,
    }
    prm.use_surprise(surprise)
    if not seqs:
        info["surprise_weight"] = float(prm.surprise.weight.detach())
        return info
    pos_weight = (len(flat) - n_high) / n_high if balance and 0 < n_high < len(flat) else 1.0
    info["pos_weight"] = pos_weight
    device = next(prm.module.parameters()).device

    def targets(idx: list[int], like: torch.Tensor) -> torch.Tensor:
        target = torch.zeros_like(like)
        for r, i in enumerate(idx):
            target[r, : len(ys[i])] = torch.tensor(ys[i], device=device)
        return target

    def batch_loss(idx: list[int]) -> torch.Tensor:
        logits, mask = prm.logits([seqs[i] for i in idx])
        return prm_loss(logits, targets(idx, logits), mask, pos_weight)

    lengths = [len(s) for s, _, _ in seqs]
    if train_backbone:
        info |= fit(prm.module, cfg, lengths, seed, batch_loss, on_step)
    else:
        cached = cached_features(prm, seqs)

        def cached_loss(idx: list[int]) -> torch.Tensor:
            places, least, mask = stack_features([cached[i] for i in idx])
            logits = prm.place_logits(places, least, mask)
            return prm_loss(logits, targets(idx, logits), mask, pos_weight)

        # The optimiser sees only what learns here; the backbone is never touched.
        trained = nn.ModuleDict({"head": prm.head, "surprise": prm.surprise})
        info |= fit(trained, cfg, lengths, seed, cached_loss, on_step)
    info["surprise_weight"] = float(prm.surprise.weight.detach())
    return info


Features = tuple[torch.Tensor, torch.Tensor | None]
"""One sequence's hidden states [U, D] and least log-probabilities [U] (None: surprise off)."""


def cached_features(prm: ProcessRewardModel, seqs: list[Encoded]) -> list[Features]:
    """`prm.features` of every sequence, computed once in eval mode without gradient."""

    def rows(chunk: Sequence[Encoded]) -> list[Features]:
        places, least, _ = prm.features(list(chunk))
        return [
            (places[r, : len(pos)], None if least is None else least[r, : len(pos)])
            for r, (_, _, pos) in enumerate(chunk)
        ]

    return frozen_map(prm.module, seqs, SCORE_CHUNK, rows)


def stack_features(rows: list[Features]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Cached features of a batch, padded to its longest: places [B, U, D], least [B, U] and
    the mask [B, U], as `ProcessRewardModel.features` returns them."""
    width = max(len(p) for p, _ in rows)
    places = torch.zeros(len(rows), width, rows[0][0].shape[-1], dtype=rows[0][0].dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    least = None if rows[0][1] is None else torch.zeros(len(rows), width)
    for r, (p, lp) in enumerate(rows):
        places[r, : len(p)] = p
        mask[r, : len(p)] = True
        if least is not None and lp is not None:
            least[r, : len(lp)] = lp
    device = rows[0][0].device
    return places.to(device), None if least is None else least.to(device), mask.to(device)


def inject_error(family: Family, task: Task, rng: random.Random) -> tuple[str, int] | None:
    """A reference solution of `task` with one step made wrong: (completion, its index). A digit
    of a random step is changed until the family's `check_step` rejects it; the other steps and
    the answer stay as they were. None when the family cannot check steps or the task has none."""
    check = getattr(family, "check_step", None)
    steps, answer = family.reference(task)
    if check is None or not steps:
        return None
    j = rng.randrange(len(steps))
    digits = [i for i, ch in enumerate(steps[j]) if ch.isdigit()]
    rng.shuffle(digits)
    for i in digits:
        for d in rng.sample("0123456789", 10):
            bad = steps[j][:i] + d + steps[j][i + 1 :]
            if bad != steps[j] and check(task, bad) is False:
                return family.render([*steps[:j], bad, *steps[j + 1 :]], answer), j
    return None


def calibration_report(
    prm: ProcessRewardModel,
    family: Family,
    tasks: dict[str, Task],
    traces: Sequence[Trace],
    verdicts: dict[str, bool],
    how: Aggregation,
    injected: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """How well `prm` agrees with ground truth on `traces` (not trained on) and `injected` error
    traces made from references of `tasks`: AUROC and ECE of the aggregated score against the
    verdicts; first-error accuracy on the wrong traces whose first wrong step `check_step` finds,
    and on the injected ones (`first_error_accuracy_injected`), each beside what a uniform guess
    among the trace's steps would score (`first_error_chance`, `first_error_chance_injected`)."""
    use = [t for t in traces if t.id in verdicts and t.task_id in tasks]
    scores = prm.step_scores([tasks[t.task_id].prompt for t in use], [t.text for t in use])
    agg = [aggregate(s, how) for s in scores]
    oks = [verdicts[t.id] for t in use]
    truth = [
        None if verdicts[t.id] else first_wrong_step(family, tasks[t.task_id], t, None) for t in use
    ]
    predicted = [first_flagged(s, len(t.steps)) for s, t in zip(scores, use, strict=True)]
    out: dict[str, Any] = {
        "auroc": auroc(agg, oks),
        "ece": ece(agg, oks),
        "n": len(use),
        "positives": sum(oks),
        "first_error_accuracy": first_error_accuracy(predicted, truth),
        "first_error_n": sum(x is not None for x in truth),
        "first_error_chance": first_error_chance(
            [len(t.steps) for t, x in zip(use, truth, strict=True) if x is not None]
        ),
    }
    if injected > 0:
        rng = random.Random(seed)
        pool = sorted(tasks.values(), key=lambda t: t.id)
        made = [
            (t, x)
            for t in rng.sample(pool, min(injected, len(pool)))
            if (x := inject_error(family, t, rng))
        ]
        inj = prm.step_scores([t.prompt for t, _ in made], [c for _, (c, _) in made])
        flagged = [first_flagged(s, len(s) - 1) for s in inj]
        out["first_error_accuracy_injected"] = first_error_accuracy(
            flagged, [j for _, (_, j) in made]
        )
        out["first_error_chance_injected"] = first_error_chance([len(s) - 1 for s in inj])
        out["injected_n"] = len(made)
    return out
