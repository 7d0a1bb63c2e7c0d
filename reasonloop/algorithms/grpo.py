"""GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024): critic-free policy gradients on groups.

Each task is sampled G times; a sample's advantage is its reward relative to its own group, so
no value network is needed. Pure functions of tensors:

- `group_advantages`: (r - mean_group) / (std_group + eps) (GRPO), or only centred
  (`scale=False`, Dr. GRPO, which drops the std to avoid favouring easy and hard groups);
- `rloo_advantages`: r_i minus the mean of the other G-1 rewards of its group (unbiased
  leave-one-out baseline);
- `varied_groups`: dynamic sampling (DAPO): groups whose rewards are all equal give zero
  advantage and only dilute the batch, so they are dropped;
- `overlong_penalty`: DAPO's soft length penalty in the last `cache` tokens before the limit;
- `grpo_loss`: the clipped surrogate -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) per token,
  plus beta times the k3 estimate of KL(pi || pi_ref) (importance-weighted), aggregated per `aggregation`:
  `sequence` (mean over each completion's tokens, then over completions; the GRPO paper),
  `token` (mean over all tokens of the batch; DAPO, so long completions are not down-weighted),
  or `fixed` (sum over tokens / (completions x max_tokens); Dr. GRPO, length-unbiased).

`tests/test_grpo.py` checks `grpo_loss` against TRL's GRPOTrainer (loss types grpo, bnpo and
dr_grpo) on identical inputs.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["sequence", "token", "fixed"]


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """[N, G] rewards (N tasks, G samples each) -> [N, G] advantages."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [tasks, samples>=2], got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[N, G] rewards -> r_i - mean_{j != i} r_j, which equals G/(G-1) (r_i - mean)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [tasks, samples>=2], got shape {tuple(rewards.shape)}")
    g = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    return rewards - others


def varied_groups(rewards: torch.Tensor) -> torch.Tensor:
    """[N] bool: the groups whose rewards are not all equal (they carry a learning signal)."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, cache: int) -> torch.Tensor:
    """0 up to max_tokens - cache, then falling linearly to -1 at max_tokens, -1 beyond."""
    if cache <= 0 or cache > max_tokens:
        raise ValueError(f"overlong cache must be in 1..{max_tokens}, got {cache}")
    over = (lengths.float() - (max_tokens - cache)).clamp(min=0)
    return -(over / cache).clamp(max=1.0)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) on samples from pi: exp(d) - d - 1, d = ref - pi."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def zero_advantage_rows(advantages: list[float] | list[torch.Tensor]) -> list[bool]:
    """Per completion: are its advantages (one, or one per token) all zero? Without a KL term
    such a completion adds nothing to the clipped surrogate or its gradient (its ratio only
    multiplies zero), so a trainer may skip its forward and backward and pass the minibatch's
    counts to `grpo_loss` instead: the same loss and step, to float rounding. In GRPO these
    are the groups whose rewards are all equal, which TRL still runs through the network."""
    return [not bool(torch.as_tensor(a).ne(0).any()) for a in advantages]


def grpo_loss(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: Aggregation = "sequence",
    max_tokens: int | None = None,
    kl_importance: bool = True,
    n_rows: int | None = None,
    n_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss and stats (kl, clip_fraction) of a batch of B completions of T tokens.

    logps, old_logps, ref_logps, mask: [B, T]; advantages: [B] (outcome) or [B, T] (dense,
    e.g. per-step process rewards). old_logps None = on-policy (ratio 1, gradient intact);
    `fixed` aggregation divides by B x max_tokens (default T). The samples come from the old
    policy, so with `kl_importance` the KL estimate is weighted by the ratio pi/pi_old to make it
    an estimate under the current policy (as TRL does by default).

    `n_rows` and `n_tokens` (default B and the mask's count) are the whole minibatch's
    completions and completion tokens, where completions that add nothing were left out of the
    tensors: with beta 0, one whose advantages are all zero has a zero loss and gradient, and
    counts only in the means' denominators (`zero_advantage_rows`)."""
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = torch.zeros_like(logps)
    if beta:
        if ref_logps is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_logps")
        kl = k3_kl(logps, ref_logps)
        if kl_importance:
            kl = kl * ratio
        per_token = per_token + beta * kl
    if (n_rows is not None or n_tokens is not None) and beta:
        raise ValueError("grpo_loss: n_rows and n_tokens leave rows out, which a KL term forbids")
    rows = logps.shape[0] if n_rows is None else n_rows
    n_tokens_t = mask.sum().clamp(min=1) if n_tokens is None else max(n_tokens, 1)
    if aggregation == "sequence":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(rows, 1)
    elif aggregation == "token":
        loss = (per_token * mask).sum() / n_tokens_t
    elif aggregation == "fixed":
        loss = (per_token * mask).sum() / (max(rows, 1) * (max_tokens or logps.shape[1]))
    else:
        raise ValueError(f"aggregation must be sequence, token or fixed, got {aggregation!r}")
    with torch.no_grad():
        was_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        stats = {
            "kl": float((kl * mask).sum() / n_tokens_t),
            "clip_fraction": float((was_clipped.to(mask.dtype) * mask).sum() / n_tokens_t),
        }
    return loss, stats
