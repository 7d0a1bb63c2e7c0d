"""PPO's critic: a separate copy of the policy's network with a scalar value head.

Why a separate critic rather than a value head on the policy's own backbone: with a shared
backbone the value loss's gradients move the policy's features (and the policy loss moves the
critic's), so `vf_coef` has to balance two objectives of different scales in one network, and
a critic that is still fitting can disturb a policy that is already good. A separate critic
(OpenRLHF, TRL's PPOTrainer, InstructGPT) trains on its own optimiser and learning rate, can be
reset or carried across rounds without touching the policy, and costs one more forward and
backward per step, which the tiny backend (and small hf models) can afford.

The critic starts as a copy of the policy (its features already encode the task) with a
zero-initialised linear head, so its first values are 0 everywhere: a neutral baseline that
needs no random draw. The backbone must offer `hidden_states(input_ids, attention_mask)`
(the tiny and hf backends do). `save` writes one safetensors file, `load` rebuilds the critic
from a policy of the same architecture and reads the weights back exactly, so a run that carries
its critic across rounds (`critic.safetensors` inside each round's checkpoint) resumes to the
same values.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from reasonloop.algorithms.frozen import frozen_map
from reasonloop.algorithms.logprobs import FROZEN_CHUNK
from reasonloop.algorithms.sft import collate
from reasonloop.models.base import LanguageModel

CRITIC_FILE = "critic.safetensors"
"""The critic's file name inside a round's checkpoint directory."""


class ScalarHead:
    """A copy of the policy's backbone with a linear head to one scalar per position: the shape
    shared by PPO's critic and the outcome reward model. Subclasses name their file format and
    say what they read off the hidden states."""

    FORMAT: ClassVar[str]
    WHAT: ClassVar[str]
    """What it is, for error messages ("PPO's critic", "the reward model")."""

    def __init__(self, backbone: Any, head: nn.Linear) -> None:
        self.backbone = backbone
        self.head = head
        self.module = nn.ModuleDict({"backbone": backbone.module, "head": head})
        """All trainable parameters (optimisers take `module.parameters()`)."""

    @classmethod
    def from_policy(cls, policy: LanguageModel) -> Self:
        """A fresh one: a copy of `policy` (the policy itself is not touched) and a zero head."""
        if not callable(getattr(policy, "hidden_states", None)):
            raise ValueError(
                f"{type(policy).__name__} has no hidden_states(): {cls.WHAT} needs a backend "
                "that exposes its last hidden states (tiny, hf)"
            )
        backbone = policy.copy()
        device = next(backbone.module.parameters()).device
        with torch.no_grad():
            probe = torch.tensor([[backbone.tokenizer.bos_id]], device=device)
            dim = backbone.hidden_states(probe).shape[-1]
        # float32 head: values and logits stay exact even on a bf16 backbone.
        head = nn.Linear(dim, 1, device=device, dtype=torch.float32)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return cls(backbone, head)

    def save(self, path: str | Path) -> None:
        """Write the weights to one safetensors file, atomically (temp file, fsync, rename): a
        crash leaves the old file or the new one, never half of one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            # save_model (not save_file) copes with tied weights (an hf model's shared embeddings).
            save_model(self.module, tmp, metadata={"format": self.FORMAT})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path, policy: LanguageModel) -> Self:
        """One written by `save`, rebuilt around a copy of `policy` (same architecture). Errors
        name the file and what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {cls.WHAT} here")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
        if meta.get("format") != cls.FORMAT:
            raise ValueError(f"{path}: not {cls.WHAT} written by save (format {meta!r})")
        new = cls.from_policy(policy)
        try:
            load_model(new.module, str(path), strict=True, device=str(new.head.weight.device))
        except RuntimeError as e:  # missing/unexpected keys or a shape that does not match
            raise ValueError(
                f"{path} does not fit the policy's architecture: {str(e)[:300]}"
            ) from e
        return new


class Critic(ScalarHead):
    """V(s_t) for every token position: backbone hidden states -> a linear head -> a scalar."""

    FORMAT = "reasonloop-critic"
    WHAT = "PPO's critic"

    def values(self, batch: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Values [B, T] at the completion positions of `batch` (0 elsewhere) and the completion
        mask [B, T], laid out as `logprobs.token_logps` lays out log-probs: position t holds
        V of the state in which completion token t+1 of the row is chosen."""
        device = next(self.module.parameters()).device
        inputs, _, mask, attn = collate(batch, self.backbone.tokenizer.pad_id, device)
        h = self.backbone.hidden_states(inputs, attn)
        return self.head(h.float()).squeeze(-1) * mask, mask


def frozen_values(critic: Critic, seqs: list[tuple[list[int], int]]) -> list[torch.Tensor]:
    """Each sequence's completion-token values (a 1-D tensor per sequence) without gradient, in
    eval mode and in chunks: PPO's old values, taken once before the round's updates."""

    def rows(chunk: Sequence[tuple[list[int], int]]) -> list[torch.Tensor]:
        values, mask = critic.values(list(chunk))
        return [row[m] for row, m in zip(values, mask, strict=True)]

    return frozen_map(critic.module, seqs, FROZEN_CHUNK, rows)
