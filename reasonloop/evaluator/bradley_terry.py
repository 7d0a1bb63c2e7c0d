"""A pair-wise (Bradley-Terry) outcome reward model: r(prompt, completion), trained on comparisons.

The reward model of RLHF (Ouyang et al. 2022, "Training language models to follow instructions
with human feedback"; TRL's RewardTrainer): P(chosen beats rejected) = sigmoid(r_c - r_r), so the
loss is -log sigmoid(r_chosen - r_rejected - margin) over pairs of a right and a wrong completion
of the same task (`bt_loss`, a pure function of tensors; the optional margin is Llama 2's).
Pairs come from the round's traces and verdicts (`bt_pairs`, the same builder as iterative DPO's).

Our choices:
- The network is the outcome reward model's (`evaluator/reward_model.py`): a copy of the policy
  with a zero-initialised scalar head read at the completion's last token, saved as
  `bt_rm.safetensors` in the round's checkpoint. Only the loss and the data differ.
- The loss fixes the reward only up to a constant, so the head's bias never receives a gradient.
  After training we set that bias by a one-dimensional logistic fit on the round's judged traces
  (`fit_offset`: the shift c minimising the BCE of sigmoid(r - c) against their verdicts), so that
  `score` = sigmoid(r) is a probability estimate and ECE means something. Ranking (AUROC,
  best-of-N) is untouched by the shift. Without judged traces to fit on the bias stays as it was.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from reasonloop.algorithms.dpo import preference_pairs
from reasonloop.algorithms.fit import fit
from reasonloop.algorithms.frozen import frozen_map
from reasonloop.config import TrainConfig
from reasonloop.evaluator.reward_model import SCORE_CHUNK, OutcomeRewardModel
from reasonloop.types import Judgement, PreferencePair, Task, Trace

BT_RM_FILE = "bt_rm.safetensors"
"""The pair-wise reward model's file name inside a round's checkpoint directory."""


def bt_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Mean -log sigmoid(r_chosen - r_rejected - margin) over pairs ([P] rewards each), float32."""
    return -F.logsigmoid(chosen.float() - rejected.float() - margin).mean()


def bt_pairs(
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    rnd: int,
    per_task: int,
    rng: random.Random,
) -> list[PreferencePair]:
    """(judged right, judged wrong) completions of the same task, at most `per_task` per task.

    Hinted traces answer another prompt (the hint shows the answer), so they are left out."""
    plain = [t for t in traces if not t.decoding.get("hint")]
    return preference_pairs(tasks, plain, judgements, rnd, per_task, rng)


def fit_offset(rewards: Sequence[float], labels: Sequence[bool], iters: int = 50) -> float:
    """The c minimising mean BCE(sigmoid(r - c), label), by Newton's method on the convex 1-D
    loss. With one class only the optimum is at infinity: c is then clamped so the base rate is
    read as 1e-3 or 1 - 1e-3 at the mean reward. 0.0 for no data."""
    if len(rewards) != len(labels):
        raise ValueError(f"{len(rewards)} rewards but {len(labels)} labels")
    if not rewards:
        return 0.0
    r = torch.tensor([float(x) for x in rewards], dtype=torch.float64)
    y = torch.tensor([1.0 if v else 0.0 for v in labels], dtype=torch.float64)
    mean_y = float(y.mean())
    if mean_y in (0.0, 1.0):
        p = 1e-3 if mean_y == 0.0 else 1 - 1e-3
        return float(r.mean()) - math.log(p / (1 - p))
    # Start where the mean prediction equals the base rate at the mean reward.
    c = float(r.mean()) - math.log(mean_y / (1 - mean_y))
    for _ in range(iters):
        p = torch.sigmoid(r - c)
        grad = float((y - p).mean())  # d/dc of mean BCE
        hess = float((p * (1 - p)).mean())
        if hess < 1e-12:
            break
        step = grad / hess
        c -= step
        if abs(step) < 1e-10:
            break
    return c


class PairwiseRewardModel(OutcomeRewardModel):
    """r = linear head on the hidden state at the last completion token, trained on pairs.

    `score` returns sigmoid(r), with r's free constant set by `fit_offset` (see the module)."""

    FORMAT = "reasonloop-bt-rm"
    WHAT = "a pair-wise reward model"

    def rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The rewards r (head output, offset included), without gradient, in eval mode."""
        seqs = self.encode(prompts, completions)
        return frozen_map(self.module, seqs, SCORE_CHUNK, lambda c: self.logits(c).tolist())

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """sigmoid(r) per (prompt, completion): a probability once the offset is fitted."""
        return [
            1.0 / (1.0 + math.exp(-max(min(x, 60.0), -60.0)))
            for x in self.rewards(prompts, completions)
        ]


def train_bt(
    rm: PairwiseRewardModel,
    pairs: Sequence[PreferencePair],
    cfg: TrainConfig,
    seed: int,
    margin: float = 0.0,
    calibrate: tuple[Sequence[str], Sequence[str], Sequence[bool]] | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train `rm` in place with `bt_loss` on `pairs`, then set its offset on `calibrate`
    (prompts, completions, verdicts) when given.

    Steps = cfg.steps, or ceil(epochs * pairs / batch_size); AdamW with the train schedule.
    Returns n_pairs, steps, seconds, losses, loss_first, loss_last, pair_accuracy (share of
    training pairs ranked right after training) and offset (None when not calibrated)."""
    info: dict[str, Any] = {
        "n_pairs": len(pairs),
        "steps": 0,
        "seconds": 0.0,
        "losses": [],
        "loss_first": None,
        "loss_last": None,
        "pair_accuracy": None,
        "offset": None,
    }
    start = time.perf_counter()
    if pairs:
        chosen = rm.encode([p.prompt for p in pairs], [p.chosen for p in pairs])
        rejected = rm.encode([p.prompt for p in pairs], [p.rejected for p in pairs])

        def batch_loss(idx: list[int]) -> torch.Tensor:
            # One forward over chosen and rejected together: both see the same weights.
            logits = rm.logits([chosen[i] for i in idx] + [rejected[i] for i in idx])
            return bt_loss(logits[: len(idx)], logits[len(idx) :], margin)

        lengths = [len(c) + len(r) for (c, _), (r, _) in zip(chosen, rejected, strict=True)]
        trained = fit(rm.module, cfg, lengths, seed, batch_loss, on_step)
        info |= {k: trained[k] for k in ("steps", "losses", "loss_first", "loss_last")}
        rc = rm.rewards([p.prompt for p in pairs], [p.chosen for p in pairs])
        rr = rm.rewards([p.prompt for p in pairs], [p.rejected for p in pairs])
        info["pair_accuracy"] = sum(a > b for a, b in zip(rc, rr, strict=True)) / len(pairs)
    if calibrate is not None and len(calibrate[0]) > 0:
        prompts, completions, labels = calibrate
        # The offset is the bias's value; rewards without it are the head's output minus bias.
        bias = float(rm.head.bias.detach()[0])
        raw = [x - bias for x in rm.rewards(prompts, completions)]
        offset = fit_offset(raw, labels)
        with torch.no_grad():
            rm.head.bias.fill_(-offset)
        info["offset"] = offset
    info["seconds"] = time.perf_counter() - start
    return info
