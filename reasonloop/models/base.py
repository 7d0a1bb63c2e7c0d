"""The one interface every algorithm sees: tokenise, generate, log-probs, forward, save, load.

A backend (tiny, hf, ...) implements `LanguageModel`. Algorithms never reach into a model's
internals: training code uses `forward` (logits for a padded batch) and `module.parameters()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Sampling:
    """How to decode. temperature 0 means greedy."""

    temperature: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    top_p: float = 1.0
    """1.0 disables nucleus sampling."""
    max_new_tokens: int = 64
    stop_at_newline: bool = True
    """Stop a sequence at the first newline (the compact formats end a completion with one)."""
    seed: int | None = None
    """Seed of the sampler's generator; the same seed gives the same samples."""
    stop_at_step: bool = False
    """Also stop a sequence right after the first step separator `;` of the compact format, and
    keep the `;` in `Completion.text` (so the next step can be appended to it): step-level search
    (`reasoner/beam_search.py`, `reasoner/mcts.py`) samples one step at a time this way. A
    sequence that ends at the newline or eos instead has written its final step and answer."""


@dataclass
class Completion:
    """One generated continuation of a prompt."""

    text: str
    """Decoded text, without the stop token."""
    n_tokens: int
    logprob: float = 0.0
    """Sum of the sampled tokens' log-probabilities under the sampling distribution's model."""
    stopped: bool = True
    """False when the token budget ran out before a stop token: the text is cut, unfinished
    (an OpenAI-compatible `finish_reason` of "length")."""
    token_logprobs: tuple[float, ...] | None = None
    """The model's log-probability (temperature 1) of each token of `text` + "\n" as sampled
    (`n_tokens` values, summing to `logprob`): the tokens SFT and RL training encode
    (`sft.encode_example`), so a policy-gradient step can take them as the rollout policy's
    (`behaviour`). None when the completion did not stop at a newline (cut, eos, a step stop) or
    the backend does not give them."""


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@runtime_checkable
class LanguageModel(Protocol):
    """What the loop needs from a model, on any backend."""

    tokenizer: Tokenizer
    module: torch.nn.Module
    """The trainable parameters live here (optimisers take `module.parameters()`)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] for a right-padded batch of token ids [B, T] (training mode aware).

        With `at` [B, T] (bool), logits [N, V] at the set positions only, in row-major order
        (`logits[at]`); a backend may skip work the other positions do not need (SFT reads the
        completion's positions only)."""
        ...

    def generate(
        self, prompts: list[str], n: int = 1, sampling: Sampling = Sampling()
    ) -> list[list[Completion]]:
        """n completions for each prompt, batched."""
        ...

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[torch.Tensor]:
        """Per-token log-probabilities of each completion given its prompt (no grad)."""
        ...

    def save(self, path: str | Path) -> None:
        """Write the weights (safetensors) and config to a directory."""
        ...

    def copy(self) -> LanguageModel:
        """An independent copy (for a frozen reference or a retrain-from-base)."""
        ...


def check_sampling(sampling: Sampling, n: int) -> None:
    """Reject sampling settings no backend can honour, naming the field."""
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    if not sampling.temperature >= 0:
        raise ValueError(f"sampling.temperature must be >= 0, got {sampling.temperature}")
    if sampling.top_k < 0:
        raise ValueError(f"sampling.top_k must be >= 0 (0 = off), got {sampling.top_k}")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"sampling.top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.max_new_tokens < 0:
        raise ValueError(f"sampling.max_new_tokens must be >= 0, got {sampling.max_new_tokens}")


def check_room(encoded: list[list[int]], limit: int, what: str) -> None:
    """Every encoded prompt must leave at least one position for its completion."""
    for i, e in enumerate(encoded):
        if len(e) >= limit:
            raise ValueError(
                f"prompt {i} is {len(e)} tokens with bos; {what} {limit} leaves no room for a completion"
            )
