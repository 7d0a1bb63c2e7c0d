"""One round of policy-gradient training on the Reasoner's own sampled groups (GRPO, RLOO).

The round's solve phase already sampled k completions per task from the current policy and the
evaluator scored them; those are the rollouts. Here: rewards -> group advantages (GRPO or RLOO,
`grpo.py`), groups without signal dropped (dynamic sampling), the old policy's log-probs taken
once, then minibatch steps on the clipped surrogate, optionally with a k3 KL to a reference.
With one pass (`epochs` 1) every step after the first is slightly off-policy, which the clipped
ratio accounts for. Old log-probs are taken at temperature 1 while the samples may have been
drawn at another temperature; as in most GRPO implementations at T=1, set the Reasoner's
temperature to 1.0 for exact on-policy ratios.

`train_ppo` is PPO on the same rollouts, with a learned critic (`value_head.Critic`) in place of
the group baseline: per-token rewards and GAE advantages (`ppo.py`), then minibatch steps on the
clipped surrogate (token mean) and the clipped value loss, each network on its own optimiser.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reasonloop import distributed, fsdp
from reasonloop.algorithms.dense_reward import dense_advantages
from reasonloop.algorithms.grpo import (
    group_advantages,
    grpo_loss,
    k3_kl,
    overlong_penalty,
    rloo_advantages,
    varied_groups,
    zero_advantage_rows,
)
from reasonloop.algorithms.logprobs import frozen_token_logps, token_logps
from reasonloop.algorithms.optim import adamw, clip_and_step, lr_at, record_step, set_lr
from reasonloop.algorithms.ppo import (
    explained_variance,
    gae,
    masked_mean,
    old_policy_kl,
    token_rewards,
    value_loss,
    whiten,
)
from reasonloop.algorithms.sft import batches, encode_example
from reasonloop.algorithms.shared_prefix import group_batches, shared_token_logps
from reasonloop.algorithms.value_head import Critic, frozen_values
from reasonloop.config import PPOConfig, RLConfig, TrainConfig
from reasonloop.models.base import LanguageModel
from reasonloop.types import Judgement, SFTExample, Task, Trace


@dataclass
class Group:
    """The k sampled completions of one task and their rewards."""

    task_id: str
    prompt: str
    completions: list[str]
    rewards: list[float]
    prompts: list[str] | None = None
    """One prompt per completion, when they differ within the group (SCoRe's second attempts,
    `score.py`: each answers a correction prompt of the same task); None: all use `prompt`."""


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
    optimizer: torch.optim.Optimizer | None = None,
    dense: list[list[torch.Tensor]] | None = None,
    behaviour: list[list[torch.Tensor | None]] | None = None,
) -> dict:
    """Train `model` in place on the groups' completions; returns per-step loss, KL, clip
    fraction, and the round's mean reward and share of groups kept by dynamic sampling.

    `optimizer` (an `optim.adamw` of this model) carries its moments over from earlier calls,
    as in an on-policy run of many sample -> train steps; None starts a fresh AdamW (a round).

    `dense` (per group, per completion: 1-D rewards, one per completion token) turns each
    completion's advantage into per-token advantages, `dense_reward.dense_advantages` with
    `rl.dense_weight`. `behaviour` (same layout; None for a row the current model sampled) are
    the log-probs of the policy that sampled a completion, one per completion token (its stop
    newline included): a stored round's (offline RL), or the sampler's own
    (`Completion.token_logprobs`), which spares the forward pass that would take them again. The
    ratio is taken against them instead of the current model's."""
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
        "rows_skipped": 0,
    }
    if not groups:
        return stats
    if rl.kl_beta and reference is None:
        raise ValueError("strategy.rl.kl_beta > 0 needs a reference model")
    tok = model.tokenizer
    encoded = [
        [
            encode_example(
                tok,
                SFTExample(
                    prompt=g.prompts[j] if g.prompts else g.prompt, completion=c, task_id=g.task_id
                ),
            )
            for j, c in enumerate(g.completions)
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
        adv += a if dense is None else _dense_rows(a, dense[i], lengths[i], rl.dense_weight)
    # The rollout policy's log-probs: given ones (`behaviour`) stand; the rest are this model's,
    # taken once before any update (one forward pass over just those rows).
    stored = (
        [b for i in kept for b in behaviour[i]] if behaviour is not None else [None] * len(seqs)
    )
    # Without a KL term a completion with zero advantage changes neither the loss nor its
    # gradient, only the means' denominators, so it is never run through the network (groups
    # whose rewards are all equal, when dynamic sampling keeps them). Under torchrun all rows
    # run: every rank must run the same forwards (FSDP gathers in them) and draw the random
    # numbers a single process would (the tiny model's abacus offsets, `distributed.shard`).
    idle = (
        zero_advantage_rows(adv)
        if not rl.kl_beta and not distributed.active()
        else [False] * len(seqs)
    )
    stats["rows_skipped"] = sum(idle)
    todo = [k for k, b in enumerate(stored) if b is None and not idle[k]]
    logps_of = shared_token_logps if rl.share_prompts else token_logps
    taken = iter(frozen_token_logps(model, [seqs[k] for k in todo], logps_of) if todo else [])
    old = [
        b.float() if b is not None else None if idle[k] else next(taken)
        for k, b in enumerate(stored)
    ]
    for k, (o, (ids, p_len)) in enumerate(zip(old, seqs, strict=True)):
        if o is not None and len(o) != len(ids) - p_len:
            raise ValueError(
                f"behaviour log-probs of completion {k} have {len(o)} values for its "
                f"{len(ids) - p_len} tokens (the stop newline included)"
            )
    ref = None
    if rl.kl_beta and reference is not None:
        ref = frozen_token_logps(reference, seqs, logps_of)

    total = cfg.steps or math.ceil(cfg.epochs * len(seqs) / cfg.batch_size)
    if optimizer is not None and fsdp.enabled(model):
        raise ValueError(
            "model.distributed.strategy 'fsdp' shards the model afresh for each call, so an "
            "optimizer carried over from an earlier call holds parameters it no longer trains"
        )
    with fsdp.sharded(model):  # before the optimiser: under FSDP it takes the shards
        module = model.module
        opt = optimizer if optimizer is not None else adamw(module, cfg)
        rng = random.Random(seed)
        was_training = module.training
        module.train()
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if rl.minibatch != "random":
                    # seqs holds the kept groups' completions one group after another
                    ends = itertools.accumulate((len(encoded[i]) for i in kept), initial=0)
                    spans = [list(range(a, b)) for a, b in itertools.pairwise(ends)]
                    spread = rl.minibatch == "spread"
                    order = group_batches(spans, cfg.batch_size, total, rng, spread)
                else:
                    order = batches([0] * len(seqs), cfg.batch_size, total, rng, bucket=False)
                for step, idx in enumerate(order):
                    lr = lr_at(step, total, cfg)
                    set_lr(opt, lr)
                    rows = distributed.shard(idx)  # under torchrun, this rank's part of the batch
                    live = [i for i in rows if not idle[i]]
                    if live:  # the others count in the means' denominators alone
                        logps, mask = logps_of(model, [seqs[i] for i in live])
                        old_b = _pad([old[i] for i in live], mask)  # type: ignore[misc]
                        ref_b = _pad([ref[i] for i in live], mask) if ref is not None else None
                        if dense is None:
                            a = torch.tensor(
                                [adv[i] for i in live], dtype=logps.dtype, device=logps.device
                            )
                        else:
                            a = _pad([adv[i] for i in live], mask)
                        left_out = len(live) < len(rows)
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
                            n_rows=len(rows) if left_out else None,
                            n_tokens=sum(len(seqs[i][0]) - seqs[i][1] for i in rows)
                            if left_out
                            else None,
                        )
                        kl, clipped = s["kl"], s["clip_fraction"]
                    else:
                        # a zero loss: AdamW still steps (moments decay, weights decay), as it
                        # would on the zero gradient of these rows run through the network
                        loss, kl, clipped = torch.zeros(()), 0.0, 0.0
                        for p in module.parameters():
                            if p.requires_grad:
                                p.grad = torch.zeros_like(p)
                    if distributed.active():
                        # kl and clip_fraction are token means; the loss is a token mean (`token`)
                        # or a mean over completions (`sequence`, and `fixed` with its fixed length).
                        tok = distributed.weight(idx, lambda i: len(seqs[i][0]) - seqs[i][1])
                        row = tok if rl.aggregation == "token" else distributed.weight(idx)
                        loss, kl, clipped = loss * row, kl * tok, clipped * tok
                    if loss.requires_grad:
                        loss.backward()
                    value, kl, clipped = distributed.sync_grads(
                        module.parameters(), [loss.item(), kl, clipped]
                    )
                    clip_and_step(opt, cfg)
                    stats["kl"].append(kl)
                    stats["clip_fraction"].append(clipped)
                    tokens = sum(len(seqs[i][0]) - 1 for i in idx)
                    record_step(stats, step, value, tokens, t0, lr, on_step)
        finally:
            module.train(was_training)
    return stats


def train_ppo(
    model: LanguageModel,
    critic: Critic,
    groups: list[Group],
    cfg: TrainConfig,
    ppo: PPOConfig,
    seed: int,
    reference: LanguageModel | None = None,
    on_step: Callable[[dict], None] | None = None,
    dense: list[list[torch.Tensor]] | None = None,
) -> dict:
    """Train the policy `model` and its `critic` in place on the groups' completions (every
    completion, groups of equal rewards too: the critic, not the group, is the baseline).

    Rollout targets are computed once, before any update: old log-probs, old values, reference
    log-probs (kl_beta > 0), per-token rewards, GAE advantages (whitened) and returns. Then
    `cfg.steps` (or `cfg.epochs` passes of) minibatches of `cfg.batch_size` completions, each
    step one AdamW step of the policy on the clipped surrogate and one of the critic on the
    clipped value loss (lr `ppo.critic_lr`, train's schedule). Returns per-step curves: losses
    (policy), value_loss, explained_variance, clip_fraction, approx_kl (to the rollout policy),
    kl (to the reference; 0 without one); and reward_mean, groups, groups_kept."""
    stats: dict = {
        "steps": 0,
        "seconds": 0.0,
        "tokens": 0,
        "tokens_per_s": 0.0,
        "losses": [],
        "value_loss": [],
        "explained_variance": [],
        "clip_fraction": [],
        "approx_kl": [],
        "kl": [],
        "reward_mean": 0.0,
        "groups": len(groups),
        "groups_kept": len(groups),
    }
    if not groups:
        return stats
    if ppo.kl_beta and reference is None:
        raise ValueError("strategy.ppo.kl_beta > 0 needs a reference model")
    tok = model.tokenizer
    seqs = [
        encode_example(tok, SFTExample(prompt=g.prompt, completion=c, task_id=g.task_id))
        for g in groups
        for c in g.completions
    ]
    outcome = [r for g in groups for r in g.rewards]
    stats["reward_mean"] = sum(outcome) / len(outcome)
    old = frozen_token_logps(model, seqs)
    ref = frozen_token_logps(reference, seqs) if ppo.kl_beta and reference is not None else None
    old_values = frozen_values(critic, seqs)
    flat = None
    if dense is not None:  # already weighted: they join the per-token rewards GAE reads
        flat = [d for g in dense for d in g]
        for d, o in zip(flat, old, strict=True):
            if len(d) != len(o):
                raise ValueError(f"a dense reward row has {len(d)} values for {len(o)} tokens")
    adv, returns = _ppo_targets(old, old_values, outcome, ref, ppo, flat)

    total = cfg.steps or math.ceil(cfg.epochs * len(seqs) / cfg.batch_size)
    with fsdp.sharded(model):  # before the optimiser: under FSDP it takes the shards
        critic_cfg = cfg.model_copy(update={"lr": ppo.critic_lr})
        opt, critic_opt = adamw(model.module, cfg), adamw(critic.module, critic_cfg)
        rng = random.Random(seed)
        modes = model.module.training, critic.module.training
        model.module.train()
        critic.module.train()
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                order = batches([0] * len(seqs), cfg.batch_size, total, rng, bucket=False)
                for step, idx in enumerate(order):
                    lr = lr_at(step, total, cfg)
                    set_lr(opt, lr)
                    set_lr(critic_opt, lr_at(step, total, critic_cfg))
                    rows = distributed.shard(idx)  # under torchrun, this rank's part of the batch
                    batch = [seqs[i] for i in rows]
                    logps, mask = token_logps(model, batch)
                    values, _ = critic.values(batch)
                    old_b = _pad([old[i] for i in rows], mask)
                    policy_loss, s = grpo_loss(
                        logps,
                        _pad([adv[i] for i in rows], mask),
                        mask,
                        old_logps=old_b,
                        eps_low=ppo.clip_low,
                        eps_high=ppo.clip_high,
                        aggregation="token",
                    )
                    returns_b = _pad([returns[i] for i in rows], mask)
                    v_loss = value_loss(
                        values,
                        _pad([old_values[i] for i in rows], mask),
                        returns_b,
                        mask,
                        ppo.value_clip or None,
                    )
                    with torch.no_grad():
                        approx_kl = float(old_policy_kl(logps, old_b, mask))
                        kl = 0.0
                        if ref is not None:
                            ref_b = _pad([ref[i] for i in rows], mask)
                            kl = float(masked_mean(k3_kl(logps, ref_b), mask))
                        ev = explained_variance(values.detach(), returns_b, mask)
                    curves = [policy_loss.item(), v_loss.item(), approx_kl, kl, s["clip_fraction"]]
                    if distributed.active():
                        # The losses and curves are means over the batch's completion tokens; the
                        # explained variance comes from the token sums of every rank.
                        w = distributed.weight(idx, lambda i: len(seqs[i][0]) - seqs[i][1])
                        policy_loss, v_loss = policy_loss * w, v_loss * w
                        curves = [c * w for c in curves] + _variance_sums(values, returns_b, mask)
                    # Separate networks, separate graphs: one backward fills both sets of gradients.
                    (policy_loss + v_loss).backward()
                    curves = distributed.sync_grads(
                        [*model.module.parameters(), *critic.module.parameters()], curves
                    )
                    clip_and_step(opt, cfg)
                    clip_and_step(critic_opt, critic_cfg)
                    if distributed.active():
                        ev = _explained_variance_of_sums(curves[5:])
                    p_loss, v_value, approx_kl, kl, clipped = curves[:5]
                    stats["approx_kl"].append(approx_kl)
                    stats["kl"].append(kl)
                    stats["explained_variance"].append(ev)
                    stats["value_loss"].append(v_value)
                    stats["clip_fraction"].append(clipped)
                    tokens = sum(len(seqs[i][0]) - 1 for i in idx)
                    record_step(stats, step, p_loss, tokens, t0, lr, on_step)
        finally:
            model.module.train(modes[0])
            critic.module.train(modes[1])
    return stats


def _ppo_targets(
    old: list[torch.Tensor],
    old_values: list[torch.Tensor],
    outcome: list[float],
    ref: list[torch.Tensor] | None,
    ppo: PPOConfig,
    dense: list[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-completion advantages and returns (1-D, one value per completion token) of the whole
    rollout batch, so whitening sees every token of the round, not one minibatch."""
    lengths = torch.tensor([len(x) for x in old])
    mask = torch.arange(int(lengths.max())) < lengths[:, None]

    def stack(rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.nn.utils.rnn.pad_sequence([x.float().cpu() for x in rows], batch_first=True)

    logps, values = stack(old), stack(old_values)
    kl = logps - stack(ref) if ref is not None else None
    extra = stack(dense) if dense is not None else None
    rewards = token_rewards(torch.tensor(outcome), mask, kl, ppo.kl_beta, extra)
    adv, returns = gae(rewards, values, mask, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:
        adv = whiten(adv, mask)
    rows = range(len(old))
    return [adv[i][mask[i]] for i in rows], [returns[i][mask[i]] for i in rows]


def _variance_sums(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """[n, sum R, sum R^2, sum D, sum D^2] over the valid tokens, D = R - V: what the ranks add
    up so that `explained_variance` covers the whole batch, not one rank's part of it."""
    m = mask.double()
    r, d = returns.double() * m, (returns.double() - values.detach().double()) * m
    return [float(x) for x in (m.sum(), r.sum(), (r * r).sum(), d.sum(), (d * d).sum())]


def _explained_variance_of_sums(sums: list[float]) -> float:
    """`ppo.explained_variance` from `_variance_sums` added over the ranks."""
    n, r, r2, d, d2 = sums
    if n < 2:
        return 0.0
    var_r = (r2 - r * r / n) / (n - 1)
    # Equal returns leave rounding, not variance, in sum R^2 - (sum R)^2 / n.
    if var_r <= 1e-12 * r2 / n:
        return 0.0
    return 1.0 - (d2 - d * d / n) / (n - 1) / var_r


def _dense_rows(
    advantages: list[float], dense: list[torch.Tensor], lengths: list[int], weight: float
) -> list[torch.Tensor]:
    """One group's per-token advantages; each dense row must cover its completion's tokens."""
    for d, n in zip(dense, lengths, strict=True):
        if len(d) != n:
            raise ValueError(f"a dense reward row has {len(d)} values for {n} completion tokens")
    return dense_advantages(advantages, dense, weight)


def _pad(rows: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Per-completion token log-probs placed at their completion positions of a [B, T] batch
    (boolean indexing fills row by row, in the same order the rows were cut)."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out[mask.bool()] = torch.cat(rows).to(out.device)
    return out
