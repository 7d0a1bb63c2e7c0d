"""Per-token log-probabilities of completions, with gradient, for the preference and RL losses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from reasonloop.algorithms.frozen import frozen_map
from reasonloop.algorithms.sft import collate
from reasonloop.models.base import LanguageModel


def token_logps(
    model: LanguageModel, batch: list[tuple[list[int], int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token) of each completion token [B, T] (0 elsewhere) and the completion mask [B, T].

    `batch` holds (token ids, prompt length) pairs as `sft.encode_example` makes them; row b's
    completion tokens are where mask[b] is True. Gradients flow when the model is training."""
    device = next(model.module.parameters()).device
    inputs, labels, mask, attn = collate(batch, model.tokenizer.pad_id, device)
    logp = torch.log_softmax(model.forward(inputs, attn).float(), -1)
    token = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return token * mask, mask


def sequence_logps(
    model: LanguageModel, batch: list[tuple[list[int], int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs [B] and completion token counts [B]."""
    token, mask = token_logps(model, batch)
    return token.sum(-1), mask.sum(-1)


FROZEN_CHUNK = 256
"""Sequences per forward in `frozen_token_logps`."""


def frozen_token_logps(
    model: LanguageModel,
    seqs: list[tuple[list[int], int]],
    forward: Callable[
        [LanguageModel, list[tuple[list[int], int]]], tuple[torch.Tensor, torch.Tensor]
    ] = token_logps,
) -> list[torch.Tensor]:
    """Each sequence's completion-token log-probs (a 1-D tensor per sequence) without gradient,
    in eval mode and in chunks: the reference or old-policy pass of DPO and the RL trainers.
    `forward` is `token_logps` or another with its outputs (`shared_prefix.shared_token_logps`)."""

    def rows(chunk: Sequence[tuple[list[int], int]]) -> list[torch.Tensor]:
        logps, mask = forward(model, list(chunk))
        return [row[m] for row, m in zip(logps, mask, strict=True)]

    return frozen_map(model.module, seqs, FROZEN_CHUNK, rows)
