"""A learned point-wise outcome reward model (ORM): P(trace is right | prompt, completion).

Built as PPO's critic is (`algorithms/value_head.py`): a separate copy of the policy's network
with a zero-initialised scalar head, so its features already read the task format and its first
answer is a neutral 0.5 everywhere. Unlike the critic, only one position counts: the logit at the
completion's last token (the state that has read the whole solution), trained with binary
cross-entropy against the gold verdicts of the round's judged traces (Cobbe et al. 2021's
verifier, V-STaR's without the DPO). A separate network rather than a head on the policy: the
ORM can be trained, carried or dropped without moving the Reasoner.

`save` / `load` write and read one safetensors file (format `reasonloop-orm`), atomically, so an
ORM can sit inside a round's checkpoint as `orm.safetensors`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from reasonloop.algorithms.fit import fit
from reasonloop.algorithms.frozen import frozen_map
from reasonloop.algorithms.sft import collate, encode_example
from reasonloop.algorithms.value_head import ScalarHead
from reasonloop.config import TrainConfig
from reasonloop.types import SFTExample

ORM_FILE = "orm.safetensors"
"""The ORM's file name inside a round's checkpoint directory."""
SCORE_CHUNK = 256
"""Sequences per forward when scoring."""


def orm_loss(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: float | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy of sequence logits [B] against 0/1 labels [B], in float32.

    `pos_weight` scales the positive terms (n_neg / n_pos balances the classes, so a round where
    most samples are right does not teach "always right")."""
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    return F.binary_cross_entropy_with_logits(
        logits.float(), labels.float(), pos_weight=weight, reduction="mean"
    )


class OutcomeRewardModel(ScalarHead):
    """Sequence logit = linear head on the backbone's hidden state at the last completion token."""

    FORMAT = "reasonloop-orm"
    WHAT = "a reward model"

    def encode(
        self, prompts: Sequence[str], completions: Sequence[str]
    ) -> list[tuple[list[int], int]]:
        """(token ids, prompt length) per pair, exactly as SFT encodes them."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        tok = self.backbone.tokenizer
        return [
            encode_example(tok, SFTExample(prompt=p, completion=c))
            for p, c in zip(prompts, completions, strict=True)
        ]

    def logits(self, batch: list[tuple[list[int], int]]) -> torch.Tensor:
        """One logit [B] per sequence, read at its last completion token (collate's input drops
        the final newline, so that is the row's last real input position)."""
        device = next(self.module.parameters()).device
        inputs, _, _, attn = collate(batch, self.backbone.tokenizer.pad_id, device)
        h = self.backbone.hidden_states(inputs, attn)
        last = torch.tensor([len(s) - 2 for s, _ in batch], device=device)
        h_last = h[torch.arange(len(batch), device=device), last]
        return self.head(h_last.float()).squeeze(-1)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """P(right) per (prompt, completion), without gradient, in eval mode and in chunks."""
        seqs = self.encode(prompts, completions)
        return frozen_map(
            self.module, seqs, SCORE_CHUNK, lambda c: torch.sigmoid(self.logits(c)).tolist()
        )


def train_orm(
    orm: OutcomeRewardModel,
    prompts: Sequence[str],
    completions: Sequence[str],
    labels: Sequence[bool],
    cfg: TrainConfig,
    seed: int,
    balance: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train `orm` in place with BCE on (prompt, completion, label) triples.

    Steps = cfg.steps, or ceil(epochs * n / batch_size); AdamW with the train schedule. With
    `balance`, positives are weighted n_neg / n_pos. A set with one class only still trains (the
    head learns the base rate). Returns steps, seconds, n, n_pos, pos_weight, losses (per step),
    loss_first, loss_last and train_accuracy (at 0.5, on the training set, after training)."""
    seqs = orm.encode(prompts, completions)
    ys = [bool(y) for y in labels]
    if len(ys) != len(seqs):
        raise ValueError(f"{len(seqs)} pairs but {len(ys)} labels")
    n_pos = sum(ys)
    info: dict[str, Any] = {
        "steps": 0,
        "seconds": 0.0,
        "n": len(ys),
        "n_pos": n_pos,
        "pos_weight": 1.0,
        "losses": [],
        "loss_first": 0.0,
        "loss_last": 0.0,
        "train_accuracy": None,
    }
    if not seqs:
        return info
    pos_weight = (len(ys) - n_pos) / n_pos if balance and 0 < n_pos < len(ys) else 1.0
    info["pos_weight"] = pos_weight
    device = next(orm.module.parameters()).device

    def batch_loss(idx: list[int]) -> torch.Tensor:
        target = torch.tensor([float(ys[i]) for i in idx], device=device)
        return orm_loss(orm.logits([seqs[i] for i in idx]), target, pos_weight)

    info |= fit(orm.module, cfg, [len(s) for s, _ in seqs], seed, batch_loss, on_step)
    probs = orm.score(prompts, completions)
    info["train_accuracy"] = sum((p >= 0.5) == y for p, y in zip(probs, ys, strict=True)) / len(ys)
    return info
