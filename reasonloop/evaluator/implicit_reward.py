"""PRIME's implicit process reward (Cui et al. 2025, after Yuan et al. 2024, "Free Process
Rewards without Process Labels"): a token-level reward learned from outcome labels only.

Two language models: pi_phi, initialised from the policy and trained, and pi_ref, frozen. The
reward of completion token t is r_t = beta * log(pi_phi(y_t) / pi_ref(y_t)); the completion's
outcome logit is sum_t r_t, and pi_phi trains with binary cross-entropy of sigmoid(sum_t r_t)
against the verifier's 0/1 label. Parametrised this way the partial sums are a Q-function, so
the per-token terms are process rewards without any step label; a step's reward is the sum over
its tokens (a step ends at its `;`, the last one at `#`).

Pure functions of tensors: `token_rewards` (per-token rewards from both models' log-probs) and
`implicit_reward_loss` (the outcome BCE on their sum); `step_rewards` sums a row over steps.
`ImplicitRewardModel` holds the two models and scores text; `train_implicit_reward` trains it.

Our choices: pi_ref is the policy that sampled the round and pi_phi starts as a copy of it, so
before training every reward is exactly 0 (P(right) = 0.5) and what pi_phi learns is only what
the labels teach; positives may be weighted n_neg / n_pos as the ORM's are; the reference
log-probs are taken once, before training (pi_ref never moves). It is not carried across rounds
(PRIME updates one pi_phi online): each round trains a fresh one from its sampling policy, which
keeps a redone train phase identical without another checkpoint file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from reasonloop.algorithms.dense_reward import step_end_tokens
from reasonloop.algorithms.fit import fit
from reasonloop.algorithms.logprobs import frozen_token_logps, token_logps
from reasonloop.algorithms.sft import encode_example
from reasonloop.config import TrainConfig
from reasonloop.models.base import LanguageModel
from reasonloop.types import SFTExample


def token_rewards(
    logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """[B, T] r_t = beta * (log pi_phi(y_t) - log pi_ref(y_t)) on the completion tokens, 0 elsewhere."""
    if not logps.shape == ref_logps.shape == mask.shape:
        raise ValueError(
            f"logps, ref_logps and mask must share a shape, got {tuple(logps.shape)}, "
            f"{tuple(ref_logps.shape)}, {tuple(mask.shape)}"
        )
    return beta * (logps - ref_logps) * mask.to(logps.dtype)


def implicit_reward_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    pos_weight: float | None = None,
) -> torch.Tensor:
    """Mean BCE of the outcome logits sum_t r_t [B] against 0/1 labels [B], in float32.

    `pos_weight` scales the positive terms (n_neg / n_pos balances the classes)."""
    logits = token_rewards(logps.float(), ref_logps.float(), mask, beta).sum(-1)
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    return F.binary_cross_entropy_with_logits(
        logits, labels.float(), pos_weight=weight, reduction="mean"
    )


def step_rewards(rewards: torch.Tensor, ends: Sequence[int]) -> list[float]:
    """A completion's 1-D token rewards summed over each step: step k is the tokens after step
    k-1's end up to and including its own end (`dense_reward.step_end_tokens`). Tokens after the
    last step (the answer) belong to no step."""
    out, start = [], 0
    for e in ends:
        out.append(float(rewards[start : e + 1].sum()))
        start = e + 1
    return out


class ImplicitRewardModel:
    """pi_phi (trained) and pi_ref (frozen), and beta: per-token rewards, P(right), step rewards."""

    def __init__(self, policy: LanguageModel, reference: LanguageModel, beta: float) -> None:
        if beta <= 0:
            raise ValueError(f"implicit reward beta must be > 0, got {beta}")
        self.policy, self.reference, self.beta = policy, reference, beta
        self.module = policy.module
        """The trainable parameters (pi_phi's)."""

    @classmethod
    def from_policy(cls, policy: LanguageModel, beta: float) -> ImplicitRewardModel:
        """pi_phi and pi_ref both fresh copies of `policy` (which is not touched)."""
        return cls(policy.copy(), policy.copy(), beta)

    def encode(
        self, prompts: Sequence[str], completions: Sequence[str]
    ) -> list[tuple[list[int], int]]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        tok = self.policy.tokenizer
        return [
            encode_example(tok, SFTExample(prompt=p, completion=c))
            for p, c in zip(prompts, completions, strict=True)
        ]

    def token_rewards(
        self, prompts: Sequence[str], completions: Sequence[str]
    ) -> list[torch.Tensor]:
        """Each completion's per-token rewards (1-D, one per completion token, the final newline
        included), without gradient."""
        seqs = self.encode(prompts, completions)
        phi = frozen_token_logps(self.policy, seqs)
        ref = frozen_token_logps(self.reference, seqs)
        return [self.beta * (a - b).float().cpu() for a, b in zip(phi, ref, strict=True)]

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """P(right) = sigmoid(sum_t r_t) per (prompt, completion)."""
        return [float(torch.sigmoid(r.sum())) for r in self.token_rewards(prompts, completions)]

    def step_rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[float]]:
        """Per-step implicit rewards (sums of token rewards over each step's tokens)."""
        tok = self.policy.tokenizer
        return [
            step_rewards(r, step_end_tokens(tok, c))
            for r, c in zip(self.token_rewards(prompts, completions), completions, strict=True)
        ]


def train_implicit_reward(
    irm: ImplicitRewardModel,
    prompts: Sequence[str],
    completions: Sequence[str],
    labels: Sequence[float],
    cfg: TrainConfig,
    seed: int,
    balance: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train pi_phi in place with `implicit_reward_loss` against `labels` in [0, 1] (verdicts,
    or soft ones such as a reward model's probabilities; n_pos counts those >= 0.5); returns steps, seconds, n, n_pos,
    pos_weight, losses, loss_first, loss_last (the train schedule and step count are `cfg`'s)."""
    seqs = irm.encode(prompts, completions)
    ys = [float(y) for y in labels]
    if len(ys) != len(seqs):
        raise ValueError(f"{len(seqs)} pairs but {len(ys)} labels")
    if not all(0.0 <= y <= 1.0 for y in ys):
        raise ValueError("implicit reward labels must lie in [0, 1]")
    n_pos = sum(y >= 0.5 for y in ys)
    info: dict[str, Any] = {
        "steps": 0,
        "seconds": 0.0,
        "n": len(ys),
        "n_pos": n_pos,
        "pos_weight": 1.0,
        "losses": [],
        "loss_first": None,
        "loss_last": None,
    }
    if not seqs:
        return info
    pos_weight = (len(ys) - n_pos) / n_pos if balance and 0 < n_pos < len(ys) else 1.0
    info["pos_weight"] = pos_weight
    ref = frozen_token_logps(irm.reference, seqs)

    def batch_loss(idx: list[int]) -> torch.Tensor:
        logps, mask = token_logps(irm.policy, [seqs[i] for i in idx])
        ref_b = torch.zeros_like(logps)
        ref_b[mask.bool()] = torch.cat([ref[i] for i in idx]).to(logps.device)
        target = torch.tensor([ys[i] for i in idx], device=logps.device)
        return implicit_reward_loss(logps, ref_b, mask, target, irm.beta, pos_weight)

    info |= fit(irm.module, cfg, [len(s) for s, _ in seqs], seed, batch_loss, on_step)
    return info
