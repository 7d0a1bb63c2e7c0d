"""Generation over fixed shards: the same samples whichever process runs which shard.

A phase's prompts are cut into shards whose size depends on the config only (never on how many
workers there are), and each shard samples from its own seed, derived from the phase's seed and
the shard's index. A shard's completions are then a function of (weights, its prompts, its seed)
alone: `LocalRollouts` runs the shards one after another in this process, a cluster
(`loop/cluster.py`) runs them on model replicas, and the concatenated results are identical.

Inside a shard, prompts are decoded `batch_size // n` at a time, and a shard holds a whole number
of these decode batches, so sharding never makes a batch smaller than unsharded generation would
and the batches (hence the float results) are the same in every mode.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from reasonloop.models.base import Completion, LanguageModel, Sampling

SHARD_PROMPTS = 256
"""Default prompts per shard (`cluster.shard_size`)."""

Progress = Callable[[int, int], None]
"""Called with (prompts done, tokens generated) as work finishes."""


def derive_seed(seed: int | None, index: int) -> int | None:
    """A seed for part `index` of something seeded with `seed` (None stays None: unseeded).

    A hash rather than arithmetic: no two (seed, index) pairs collide in practice, and the result
    stays below 2**63 whatever the inputs, which every backend's generator accepts."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def decode_batch(batch_size: int, n: int) -> int:
    """Prompts per `model.generate` call: `batch_size` rows of prompts x samples."""
    return max(1, batch_size // max(n, 1))


@dataclass(frozen=True)
class Shard:
    """Prompts [start, stop) of a generate call, sampled with `sampling` (seeded for this shard)."""

    index: int
    start: int
    stop: int
    sampling: Sampling


def plan_shards(
    n_prompts: int, n: int, sampling: Sampling, batch_size: int, shard_size: int
) -> list[Shard]:
    """The fixed shards of a call over `n_prompts` prompts: `shard_size` prompts each, rounded up
    to whole decode batches (the last shard takes the rest)."""
    per_call = decode_batch(batch_size, n)
    size = per_call * max(1, math.ceil(shard_size / per_call))
    return [
        Shard(
            i,
            start,
            min(start + size, n_prompts),
            replace(sampling, seed=derive_seed(sampling.seed, i)),
        )
        for i, start in enumerate(range(0, n_prompts, size))
    ]


def sample_shard(
    model: LanguageModel,
    prompts: list[str],
    n: int,
    sampling: Sampling,
    batch_size: int,
    progress: Progress | None = None,
) -> list[list[Completion]]:
    """One shard's completions, the same wherever it runs: decode batches in order, each from
    its own seed derived from the shard's."""
    out: list[list[Completion]] = []
    per_call = decode_batch(batch_size, n)
    for j, start in enumerate(range(0, len(prompts), per_call)):
        chunk = prompts[start : start + per_call]
        res = model.generate(
            chunk, n=n, sampling=replace(sampling, seed=derive_seed(sampling.seed, j))
        )
        out.extend(res)
        if progress:
            progress(len(chunk), sum(c.n_tokens for cs in res for c in cs))
    return out


@runtime_checkable
class Rollouts(Protocol):
    """Where generation runs: `generate` over fixed shards with the weights last given to `sync`."""

    shard_size: int

    def sync(self, model: LanguageModel, version: str) -> None:
        """Generate with `model`'s weights from now on; `version` names them, and syncing the
        version already held is free (replicas are not sent the same weights twice)."""
        ...

    def generate(
        self,
        prompts: list[str],
        n: int,
        sampling: Sampling,
        batch_size: int,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        """n completions per prompt, in prompt order, identical to `LocalRollouts`'."""
        ...

    def stats(self) -> list[dict[str, Any]]:
        """Per worker: its process id, shards and prompts done, the weights version it holds."""
        ...

    def close(self) -> None:
        """Release the workers (a no-op in-process)."""
        ...


class LocalRollouts:
    """The shards one after another in this process, on the model itself (`cluster.kind: local`)."""

    def __init__(self, model: LanguageModel | None = None, shard_size: int = SHARD_PROMPTS) -> None:
        self.model = model
        self.shard_size = shard_size
        self.version = ""
        self.shards = 0
        self.prompts = 0

    def sync(self, model: LanguageModel, version: str) -> None:
        # The model object itself is used: there is nothing to copy.
        self.model, self.version = model, version

    def generate(
        self,
        prompts: list[str],
        n: int,
        sampling: Sampling,
        batch_size: int,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        if self.model is None:
            raise RuntimeError("LocalRollouts.generate before sync(model, version)")
        out: list[list[Completion]] = []
        for s in plan_shards(len(prompts), n, sampling, batch_size, self.shard_size):
            out += sample_shard(
                self.model, prompts[s.start : s.stop], n, s.sampling, batch_size, progress
            )
            self.shards += 1
            self.prompts += s.stop - s.start
        return out

    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "pid": os.getpid(),
                "shards": self.shards,
                "prompts": self.prompts,
                "version": self.version,
            }
        ]

    def close(self) -> None:
        pass


def as_rollouts(model: LanguageModel | Rollouts) -> Rollouts:
    """Rollouts as given, or a model wrapped to generate in this process."""
    return model if isinstance(model, Rollouts) else LocalRollouts(model)
