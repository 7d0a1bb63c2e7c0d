"""Direct preference optimisation (Rafailov et al. 2023) and its IPO / length-normalised variants.

The loss is a pure function of sequence log-probabilities: the policy's and the frozen
reference's, summed over each completion's tokens. With the implicit rewards
r = beta * (log pi(y|x) - log pi_ref(y|x)):

- `sigmoid` (DPO):      -log sigmoid(r_chosen - r_rejected)      (with label smoothing eps:
                        -(1-eps) log sigmoid(d) - eps log sigmoid(-d), conservative DPO)
- `ipo` (Azar et al.):  (h_chosen - h_rejected - 1 / (2 beta))^2, h = log-ratio per token
- `sigmoid_norm`:       DPO on per-token log-ratios (length-normalised, as in SimPO/LN-DPO)

The per-token normalisation of `ipo` follows TRL, whose authors confirmed it with the IPO
authors; `tests/test_dpo.py` checks all three against TRL's DPOTrainer on identical inputs.
RPO (Pang et al. 2024) adds alpha times the chosen completion's mean token NLL; that term needs
token counts and is added in `train_dpo`, which also builds the batches.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from reasonloop import distributed, fsdp
from reasonloop.algorithms.logprobs import frozen_token_logps, sequence_logps
from reasonloop.algorithms.optim import adamw, clip_and_step, lr_at, record_step, set_lr
from reasonloop.algorithms.sft import batches, encode_example
from reasonloop.config import TrainConfig
from reasonloop.models.base import LanguageModel
from reasonloop.types import Judgement, PreferencePair, SFTExample, Task, Trace

LossType = Literal["sigmoid", "ipo", "sigmoid_norm"]


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: LossType = "sigmoid",
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean loss over pairs, and the implicit rewards of chosen and rejected ([P] each, detached).

    Inputs are [P] sequence log-probs. `ipo` and `sigmoid_norm` divide each log-ratio by its
    completion's token count (`chosen_tokens`, `rejected_tokens`, [P], required for them)."""
    if beta <= 0:
        raise ValueError(f"dpo beta must be > 0, got {beta}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if loss_type in ("ipo", "sigmoid_norm"):
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError(f"dpo loss_type {loss_type!r} needs chosen_tokens and rejected_tokens")
        chosen_ratio = chosen_ratio / chosen_tokens.clamp(min=1)
        rejected_ratio = rejected_ratio / rejected_tokens.clamp(min=1)
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid" or loss_type == "sigmoid_norm":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"dpo loss_type must be sigmoid, ipo or sigmoid_norm, got {loss_type!r}")
    rewards = (
        beta * (policy_chosen - ref_chosen).detach(),
        beta * (policy_rejected - ref_rejected).detach(),
    )
    return losses.mean(), rewards[0], rewards[1]


def encode_pair(model: LanguageModel, pair: PreferencePair) -> tuple[tuple, tuple]:
    """(chosen, rejected) as (ids, prompt length), with the same framing as SFT examples; a
    step-level pair's completions are one step each and get no closing newline."""

    def one(completion: str) -> tuple[list[int], int]:
        ex = SFTExample(prompt=pair.prompt, completion=completion, task_id=pair.task_id)
        ids, p_len = encode_example(model.tokenizer, ex)
        if pair.level == "step":
            ids = ids[:p_len] + model.tokenizer.encode(completion)
        return ids, p_len

    return one(pair.chosen), one(pair.rejected)


def train_dpo(
    model: LanguageModel,
    reference: LanguageModel,
    pairs: list[PreferencePair],
    cfg: TrainConfig,
    seed: int,
    beta: float = 0.1,
    loss_type: LossType = "sigmoid",
    rpo_alpha: float = 0.0,
    label_smoothing: float = 0.0,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Train `model` in place on `pairs` against the frozen `reference`.

    Reference log-probs are computed once, up front (the reference never changes within a
    call). Returns steps, seconds, losses, and per-step reward margin and accuracy (the share of
    pairs whose chosen reward beats the rejected one)."""
    stats: dict = {
        "steps": 0,
        "seconds": 0.0,
        "tokens": 0,
        "tokens_per_s": 0.0,
        "losses": [],
        "margins": [],
        "accuracies": [],
    }
    if not pairs:
        return stats
    encoded = []
    for i, p in enumerate(pairs):
        try:
            encoded.append(encode_pair(model, p))
        except ValueError as e:
            raise ValueError(f"preference pair {i} (task {p.task_id!r}): {e}") from None
    ref = frozen_token_logps(reference, [c for c, _ in encoded] + [r for _, r in encoded])
    ref = torch.stack([row.sum() for row in ref])
    ref_chosen, ref_rejected = ref[: len(encoded)], ref[len(encoded) :]

    total = cfg.steps or math.ceil(cfg.epochs * len(pairs) / cfg.batch_size)
    with fsdp.sharded(model):  # before the optimiser: under FSDP it takes the shards
        module = model.module
        opt = adamw(module, cfg)
        rng = random.Random(seed)
        was_training = module.training
        module.train()
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                order = batches([0] * len(pairs), cfg.batch_size, total, rng, bucket=False)
                for step, idx in enumerate(order):
                    lr = lr_at(step, total, cfg)
                    set_lr(opt, lr)
                    rows = distributed.shard(idx)  # under torchrun, this rank's part of the batch
                    both = [encoded[i][0] for i in rows] + [encoded[i][1] for i in rows]
                    logps, counts = sequence_logps(model, both)
                    n = len(rows)
                    sel = torch.tensor(rows, device=ref_chosen.device)
                    loss, rc, rr = dpo_loss(
                        logps[:n],
                        logps[n:],
                        ref_chosen[sel].to(logps.device),
                        ref_rejected[sel].to(logps.device),
                        beta,
                        loss_type,
                        counts[:n],
                        counts[n:],
                        label_smoothing,
                    )
                    if rpo_alpha:
                        loss = loss + rpo_alpha * (-logps[:n] / counts[:n].clamp(min=1)).mean()
                    margin, accuracy = (rc - rr).mean().item(), (rc > rr).float().mean().item()
                    if distributed.active():
                        # Means over the rank's pairs -> its share of the means over the batch's.
                        w = distributed.weight(idx)
                        loss, margin, accuracy = loss * w, margin * w, accuracy * w
                    loss.backward()
                    value, margin, accuracy = distributed.sync_grads(
                        module.parameters(), [loss.item(), margin, accuracy]
                    )
                    clip_and_step(opt, cfg)
                    stats["margins"].append(margin)
                    stats["accuracies"].append(accuracy)
                    tokens = sum(len(ids) - 1 for i in idx for ids, _ in encoded[i])
                    record_step(stats, step, value, tokens, t0, lr, on_step)
        finally:
            module.train(was_training)
    return stats


def preference_pairs(
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    rnd: int,
    per_task: int,
    rng: random.Random,
) -> list[PreferencePair]:
    """(right, wrong) pairs of distinct completions of the same task, as the evaluator judged.

    Tasks whose samples are all right or all wrong give no pair. Each completion is used at
    most once per side; `rng` decides which when there are more than `per_task`."""
    verdict = {j.trace_id: j.verdict for j in judgements if j.level == "outcome"}
    right: dict[str, dict[str, Trace]] = {}
    wrong: dict[str, dict[str, Trace]] = {}
    for t in traces:
        v = verdict.get(t.id)
        if v is None or t.task_id not in tasks:
            continue
        side = right if v else wrong
        side.setdefault(t.task_id, {}).setdefault(t.text, t)
    pairs = []
    for task_id in sorted(right.keys() & wrong.keys()):
        good, bad = list(right[task_id].values()), list(wrong[task_id].values())
        rng.shuffle(good)
        rng.shuffle(bad)
        for c, r in list(zip(good, bad, strict=False))[:per_task]:
            pairs.append(
                PreferencePair(
                    prompt=tasks[task_id].prompt,
                    chosen=c.text,
                    rejected=r.text,
                    level="outcome",
                    task_id=task_id,
                    round=rnd,
                )
            )
    return pairs
