"""Dense (token- or step-level) rewards for the policy-gradient trainers, as in PRIME (Cui et al.
2025): the outcome advantage of a completion plus the returns-to-go of per-token rewards.

GRPO and RLOO give every token of a completion the same advantage, the completion's outcome
reward against its group. With dense rewards r_t (from an implicit PRM, a step PRM or a step
checker) each token t also gets the reward still ahead of it, sum_{s >= t} gamma^(s-t) r_s: a
token that leads into a step the reward model dislikes is pushed down even in a completion that
ends right. This is RTO-style token-level reinforcement (Zhong et al. 2024), chosen over a
token-weighted DPO because it reuses the on-policy groups the round already sampled and keeps
GRPO's clipped surrogate, which takes per-token advantages as they are.

Pure functions, one row per completion:

- `leave_one_out_token_rewards`: PRIME's baseline for dense rewards: from each token reward of
  completion i, subtract the mean over the group's other completions of their per-token mean
  reward, so a reward model that pays every completion alike moves nothing;
- `returns_to_go`: the discounted reverse cumulative sum over each row's valid tokens;
- `dense_advantages`: a group's sequence advantages plus `weight` times the returns-to-go;
- `step_end_tokens`: which completion token closes each step of the compact format
  (`step;step#answer`), so per-step scores land on a token;
- `place_step_scores`: per-step scores as per-token rewards at those tokens.

A step PRM's probabilities p enter as the reward p - 1 (a step is charged its estimated chance of
being wrong): a right step is free and a wrong one costs up to 1, so writing more steps is never
paid for in itself (with p as the reward, padding a solution with steps would be).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reasonloop.reasoner.format import ANSWER_MARK, STEP_SEP


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """[B, T] -> [B, T]: R_t = r_t + gamma R_{t+1} over each row's valid tokens (0 elsewhere)."""
    if rewards.shape != mask.shape:
        raise ValueError(
            f"rewards and mask must share a shape, got {tuple(rewards.shape)} and {tuple(mask.shape)}"
        )
    m = mask.to(rewards.dtype)
    r = rewards * m
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running  # padding holds 0 reward, so nothing leaks
        out[:, t] = running
    return out * m


def leave_one_out_token_rewards(rewards: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One group's per-token rewards (a 1-D tensor per completion) minus, for completion i, the
    mean over the other completions j of mean_t r^j_t. A group of one is returned unchanged."""
    n = len(rewards)
    if n < 2:
        return [r.clone() for r in rewards]
    means = torch.stack([r.mean() if r.numel() else r.new_zeros(()) for r in rewards])
    total = means.sum()
    return [r - (total - means[i]) / (n - 1) for i, r in enumerate(rewards)]


def dense_advantages(
    sequence_advantages: Sequence[float],
    dense: Sequence[torch.Tensor],
    weight: float = 1.0,
    leave_one_out: bool = True,
    gamma: float = 1.0,
) -> list[torch.Tensor]:
    """One group's per-token advantages: A_i + weight * returns-to-go of its dense rewards
    (baselined by `leave_one_out_token_rewards` first, PRIME's recipe for GRPO/RLOO)."""
    if len(sequence_advantages) != len(dense):
        raise ValueError(f"{len(sequence_advantages)} advantages but {len(dense)} dense rows")
    rows = leave_one_out_token_rewards(dense) if leave_one_out else [d for d in dense]
    if not rows:
        return []
    lengths = torch.tensor([len(d) for d in rows])
    mask = torch.arange(int(lengths.max())) < lengths[:, None]
    padded = torch.nn.utils.rnn.pad_sequence([d.double() for d in rows], batch_first=True)
    rtg = returns_to_go(padded, mask, gamma)
    return [(a + weight * rtg[i, : lengths[i]]).float() for i, a in enumerate(sequence_advantages)]


def step_end_tokens(tokenizer, completion: str) -> list[int]:
    """Index, among the completion's tokens, of the token that closes each step (the `;` after it,
    or the `#` after the last), one per non-empty step as `format.parse` counts them.

    Exact for one-token-per-character tokenizers (tiny); for a subword tokenizer it is the last
    token of the encoded prefix, which a merge across the separator may shift by one."""
    text = completion.split("\n", 1)[0]
    if ANSWER_MARK not in text:
        return []
    body = text.rpartition(ANSWER_MARK)[0]
    ends, start = [], 0
    # Only `;` splits the body (a `#` before the last one is part of a step, as `parse` reads
    # it); the last step is closed by the final `#`, at index len(body).
    for i in range(len(body) + 1):
        if i == len(body) or body[i] == STEP_SEP:
            if i > start:  # an empty segment (";;") is no step
                ends.append(len(tokenizer.encode(text[: i + 1])) - 1)
            start = i + 1
    return ends


def place_step_scores(
    scores: Sequence[Sequence[float | None]],
    ends: Sequence[Sequence[int]],
    lengths: Sequence[int],
) -> list[torch.Tensor]:
    """Per-completion 1-D rewards of `lengths[i]` tokens, zero except score k at token ends[i][k].

    A None score (a step nobody could check) adds nothing; ends past the row (a truncated
    completion) are dropped; more scores than ends (or the reverse) use the shorter list."""
    if not len(scores) == len(ends) == len(lengths):
        raise ValueError(f"{len(scores)} score rows, {len(ends)} end rows, {len(lengths)} lengths")
    out = []
    for row, pos, n in zip(scores, ends, lengths, strict=True):
        d = torch.zeros(n)
        for s, p in zip(row, pos, strict=False):
            if s is not None and 0 <= p < n:
                d[p] += float(s)
        out.append(d)
    return out
