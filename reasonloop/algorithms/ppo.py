"""PPO (Schulman et al. 2017) for language models: per-token rewards, GAE, the clipped value loss.

Pure functions of tensors over token positions. Every [B, T] tensor is one row per completion;
`mask` marks the completion's tokens (the actions), a contiguous span anywhere in the row, so
both a completion-only layout (span at 0) and `sft.collate`'s layout (span after the prompt)
work. Token t's value is V(s_t), the value of the state in which that token is chosen.

- `token_rewards`: the classic RLHF reward (Ziegler et al. 2019, Ouyang et al. 2022): the
  outcome reward on the last completion token, minus `kl_beta * (logp - ref_logp)` on every
  token, plus optional dense rewards (a process reward model's step scores placed at the
  tokens that end each step);
- `gae`: generalised advantage estimation (Schulman et al. 2016), the value of the token after
  the last one is 0 (the episode ends there); returns = advantages + values;
- `whiten`: advantages normalised over the batch's valid tokens (masked mean and std);
- `value_loss`: PPO2's clipped value loss, 0.5 * max((V - R)^2, (V_clip - R)^2) with V_clip the
  old value moved at most `clip` towards the new one, as in OpenRLHF and TRL's PPO;
- `explained_variance`: 1 - Var(R - V) / Var(R) over valid tokens, how much of the returns'
  spread the critic accounts for (1 perfect, 0 no better than a constant, < 0 worse);
- `old_policy_kl`: PPO's approx_kl diagnostic, how far the policy has moved from the one that
  sampled the batch.

The policy side is `grpo.grpo_loss` with per-token advantages ([B, T]) and `token` aggregation:
the same clipped surrogate -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A).
"""

from __future__ import annotations

import torch


def last_token(mask: torch.Tensor) -> torch.Tensor:
    """[B] index of each row's last valid position (0 for a row with none)."""
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, 0).max(dim=1).values


def token_rewards(
    outcome: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_beta: float = 0.0,
    dense: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token rewards [B, T]: `outcome` [B] on each row's last valid token, minus
    `kl_beta * kl` (kl [B, T], usually logp - ref_logp of the sampled tokens), plus `dense`
    [B, T] (already placed at the positions that earn it); zero where mask is 0."""
    mask_f = mask.to(outcome.dtype)
    rewards = torch.zeros(mask.shape, dtype=outcome.dtype, device=outcome.device)
    has_tokens = mask.bool().any(dim=1)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token(mask)] = torch.where(has_tokens, outcome, 0.0)
    if kl is not None and kl_beta:
        rewards = rewards - kl_beta * kl.to(rewards.dtype)
    if dense is not None:
        rewards = rewards + dense.to(rewards.dtype)
    return rewards * mask_f


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) [B, T] by GAE over each row's valid tokens.

    delta_t = r_t + gamma V_{t+1} - V_t with V_{t+1} = 0 after the last valid token;
    A_t = delta_t + gamma lam A_{t+1}; returns R_t = A_t + V_t. gamma = lam = 1 gives the
    reward-to-go minus V_t; lam = 0 gives the one-step TD error. Zero where mask is 0."""
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"rewards, values and mask must share a shape, got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    m = mask.to(values.dtype)
    r, v = rewards * m, values * m
    T = r.shape[1]
    # One step further: V_{t+1} and "is t+1 part of the episode", 0 beyond the row's end.
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    next_m = torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)
    delta = (r + gamma * next_v - v) * m
    adv = torch.zeros_like(v)
    running = torch.zeros_like(v[:, 0])
    # A sequential scan over T (tens to hundreds of tokens), vectorised over the batch.
    for t in range(T - 1, -1, -1):
        running = delta[:, t] + gamma * lam * next_m[:, t] * running
        adv[:, t] = running
    adv = adv * m
    return adv, (adv + v) * m


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the valid entries (0 with fewer than two)."""
    m = mask.to(x.dtype)
    n = m.sum()
    if n < 2:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    centred = (x - masked_mean(x, mask)) * m
    return (centred**2).sum() / (n - 1)


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / std over the valid tokens of the whole batch (zero where mask is 0).
    shift_mean False only rescales, keeping the sign of every advantage."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
) -> torch.Tensor:
    """Clipped value loss 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2), the mean
    over valid tokens. The clip keeps the critic near the values the advantages were computed
    with, as the ratio clip does for the policy; clip None or 0: plain 0.5 (V - R)^2."""
    loss = (values - returns) ** 2
    if clip:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def old_policy_kl(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PPO's approx_kl: KL(pi_old || pi) estimated on pi_old's samples by k3, (rho - 1) - log rho
    with rho = pi / pi_old, the mean over valid tokens. It grows linearly (-log rho) when a rare
    token is pushed further down, where the other direction's k3 grows like 1 / rho and one
    token can swamp the mean."""
    log_ratio = logps - old_logps
    return masked_mean(torch.expm1(log_ratio) - log_ratio, mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over valid tokens; 0 when the returns do not vary (nothing to
    explain, and run records stay strict JSON, which has no NaN)."""
    var_r = masked_var(returns, mask)
    if float(var_r) == 0.0:
        return 0.0
    return float(1 - masked_var(returns - values, mask) / var_r)
