"""One round of policy-gradient training on the Reasoner's own sampled groups (GRPO, RLOO).

The round's solve phase already sampled k completions per task from the current policy and the
evaluator scored them; those are the rollouts. Here: rewards -> group advantages (GRPO or RLOO,
`grpo.py`), groups without signal dropped (dynamic sampling), the old policy's log-probs taken
once, then minibatch steps on the clipped surrogate, optionally with a k3 KL to a reference.
With one pass (`epochs` 1) every step after the first is slightly off-policy, which the clipped
ratio accounts for. Old log-probs are taken at temperature 1 while the samples may have been
drawn at another temperature; as in most GRPO implementations at T=1, set the Reasoner's
temperature to 1.0 for exact on-policy ratios.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reasonloop.algorithms.grpo import (
    group_advantages,
    grpo_loss,
    overlong_penalty,
    rloo_advantages,
    varied_groups,
)
from reasonloop.algorithms.logprobs import frozen_token_logps, token_logps
from reasonloop.algorithms.optim import adamw, clip_and_step, lr_at, record_step, set_lr
from reasonloop.algorithms.sft import batches, encode_example
from reasonloop.config import RLConfig, TrainConfig
from reasonloop.models.base import LanguageModel
from reasonloop.types import Judgement, SFTExample, Task, Trace


@dataclass
class Group:
    """The k sampled completions of one task and their rewards."""

    task_id: str
    prompt: str
    completions: list[str]
    rewards: list[float]


def groups_from_round(
    tasks: dict[str, Task], traces: list[Trace], judgements: list[Judgement]
) -> list[Group]:
    """Group each task's traces; a trace's reward is its outcome judgement's score (0 if none).

    Tasks with fewer than two traces are left out: a group of one has no baseline."""
    score = {
        j.trace_id: (j.scores[0] if j.scores else 0.0) for j in judgements if j.level == "outcome"
    }
    by_task: dict[str, Group] = {}
    for t in traces:
        if t.task_id not in tasks or t.decoding.get("hint"):
            continue
        g = by_task.setdefault(t.task_id, Group(t.task_id, tasks[t.task_id].prompt, [], []))
        g.completions.append(t.text)
        g.rewards.append(float(score.get(t.id, 0.0)))
    return [g for g in by_task.values() if len(g.completions) >= 2]


def advantages(
    groups: list[Group],
    rl: RLConfig,
    algorithm: str,
    lengths: list[list[int]] | None,
    max_tokens: int,
) -> tuple[list[int], list[list[float]]]:
    """Indices of the groups that carry signal, and their per-completion advantages."""
    kept, advs = [], []
    for i, (g, lens) in enumerate(zip(groups, lengths or [None] * len(groups), strict=True)):
        r = torch.tensor([g.rewards], dtype=torch.float64)
        if rl.overlong_cache and lens is not None:
            r = r + overlong_penalty(torch.tensor([lens]), max_tokens, rl.overlong_cache).double()
        if rl.dynamic_sampling and not bool(varied_groups(r)[0]):
            continue
        if algorithm == "rloo":
            a = rloo_advantages(r)
        else:
            a = group_advantages(r, scale=rl.scale_advantages)
        kept.append(i)
        advs.append(a[0].tolist())
    return kept, advs


def train_policy_gradient(
    model: LanguageModel,
    groups: list[Group],
    cfg: TrainConfig,
    rl: RLConfig,
    seed: int,
    algorithm: str = "grpo",
    reference: LanguageModel | None = None,
    max_new_tokens: int = 128,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Train `model` in place on the groups' completions; returns per-step loss, KL, clip
    fraction, and the round's mean reward and share of groups kept by dynamic sampling."""
    stats: dict = {
        "steps": 0,
        "seconds": 0.0,
        "tokens": 0,
        "tokens_per_s": 0.0,
        "losses": [],
        "kl": [],
        "clip_fraction": [],
        "reward_mean": 0.0,
        "groups": len(groups),
        "groups_kept": 0,
    }
    if not groups:
        return stats
    if rl.kl_beta and reference is None:
        raise ValueError("strategy.rl.kl_beta > 0 needs a reference model")
    tok = model.tokenizer
    encoded = [
        [
            encode_example(tok, SFTExample(prompt=g.prompt, completion=c, task_id=g.task_id))
            for c in g.completions
        ]
        for g in groups
    ]
    lengths = [[len(ids) - p for ids, p in enc] for enc in encoded]
    stats["reward_mean"] = sum(sum(g.rewards) for g in groups) / sum(len(g.rewards) for g in groups)
    kept, advs = advantages(groups, rl, algorithm, lengths, max_new_tokens)
    stats["groups_kept"] = len(kept)
    if not kept:
        return stats
    seqs, adv = [], []
    for i, a in zip(kept, advs, strict=True):
        seqs += encoded[i]
        adv += a
    old = frozen_token_logps(model, seqs)
    ref = frozen_token_logps(reference, seqs) if rl.kl_beta and reference is not None else None

    total = cfg.steps or math.ceil(cfg.epochs * len(seqs) / cfg.batch_size)
    module = model.module
    opt = adamw(module, cfg)
    rng = random.Random(seed)
    was_training = module.training
    module.train()
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            order = batches([0] * len(seqs), cfg.batch_size, total, rng, bucket=False)
            for step, idx in enumerate(order):
                lr = lr_at(step, total, cfg)
                set_lr(opt, lr)
                logps, mask = token_logps(model, [seqs[i] for i in idx])
                old_b = _pad([old[i] for i in idx], mask)
                ref_b = _pad([ref[i] for i in idx], mask) if ref is not None else None
                a = torch.tensor([adv[i] for i in idx], dtype=logps.dtype, device=logps.device)
                loss, s = grpo_loss(
                    logps,
                    a,
                    mask,
                    old_logps=old_b,
                    ref_logps=ref_b,
                    beta=rl.kl_beta,
                    eps_low=rl.clip_low,
                    eps_high=rl.clip_high,
                    aggregation=rl.aggregation,
                    max_tokens=max_new_tokens,
                )
                loss.backward()
                clip_and_step(opt, cfg)
                stats["kl"].append(s["kl"])
                stats["clip_fraction"].append(s["clip_fraction"])
                tokens = sum(len(seqs[i][0]) - 1 for i in idx)
                record_step(stats, step, loss.item(), tokens, t0, lr, on_step)
    finally:
        module.train(was_training)
    return stats


def _pad(rows: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Per-completion token log-probs placed at their completion positions of a [B, T] batch
    (boolean indexing fills row by row, in the same order the rows were cut)."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out[mask.bool()] = torch.cat(rows).to(out.device)
    return out
