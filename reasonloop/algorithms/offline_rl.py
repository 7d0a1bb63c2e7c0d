"""Offline policy gradient on the stored rounds of a run: GRPO / RLOO on old samples, with
importance ratios against the policy that drew them (offline GRPO; the clipped surrogate of
PPO is the trust region that keeps stale samples from pulling the policy far).

A run directory keeps, for every round q >= 1, the tasks, the k sampled traces per task, their
judgements and the checkpoint of the round before, `checkpoint(q - 1)`, which sampled them. The
traces do not store their sampling log-probs, so they are recomputed: log pi_{q-1}(y_t) of each
completion token under `checkpoint(q - 1)` (at temperature 1, as the online trainer's old
log-probs are; with the Reasoner's temperature at 1 they are the exact behaviour log-probs, at
another temperature the ratio is to the untempered policy, as in most GRPO implementations).
The groups and their outcome rewards are `policy_gradient.groups_from_round`'s, so an offline
update sees the same advantages the online one did.

- `stored_groups`: the groups, behaviour log-probs and tasks of some stored rounds;
- `train_offline`: train a model on them with `train_policy_gradient`, no new sampling.

The loop's `strategy.offline_rounds` adds the stored groups of the last few rounds to each
round's own (`loop/rl_inputs.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from reasonloop.algorithms.logprobs import frozen_token_logps
from reasonloop.algorithms.policy_gradient import Group, groups_from_round, train_policy_gradient
from reasonloop.algorithms.sft import encode_example
from reasonloop.config import ModelConfig, RLConfig, TrainConfig
from reasonloop.loop.store import RunDir, read_records
from reasonloop.models import load_model
from reasonloop.models.base import LanguageModel
from reasonloop.types import Judgement, SFTExample, Task, Trace


def behaviour_logps(sampler: LanguageModel, groups: Sequence[Group]) -> list[list[torch.Tensor]]:
    """Per group, per completion: the completion tokens' log-probs under `sampler` (1-D)."""
    seqs = [
        encode_example(sampler.tokenizer, SFTExample(prompt=g.prompt, completion=c))
        for g in groups
        for c in g.completions
    ]
    flat = iter(frozen_token_logps(sampler, seqs))
    return [[next(flat).cpu() for _ in g.completions] for g in groups]


def stored_groups(
    run_dir: str | Path | RunDir, rounds: Sequence[int], model_cfg: ModelConfig
) -> tuple[list[Group], list[list[torch.Tensor]], dict[str, Task]]:
    """(groups, behaviour log-probs, tasks by id) of the stored `rounds` (each >= 1, finished
    through its solve phase). Round 0 holds reference traces, not samples: refused."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    groups: list[Group] = []
    behaviour: list[list[torch.Tensor]] = []
    tasks: dict[str, Task] = {}
    for q in rounds:
        if q < 1:
            raise ValueError(f"offline RL reads sampled rounds (>= 1); round {q} has none")
        d = rd.round_dir(q)
        by_id = {t.id: t for t in read_records(d / "tasks.parquet", Task)}
        traces = read_records(d / "traces.parquet", Trace)
        judgements = read_records(d / "judgements.parquet", Judgement)
        found = groups_from_round(by_id, traces, judgements)
        if not found:
            continue
        sampler = load_model(model_cfg, rd.checkpoint(q - 1))
        groups += found
        behaviour += behaviour_logps(sampler, found)
        tasks |= by_id
        del sampler
    return groups, behaviour, tasks


def train_offline(
    model: LanguageModel,
    run_dir: str | Path | RunDir,
    rounds: Sequence[int],
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    rl: RLConfig,
    seed: int,
    algorithm: str = "grpo",
    max_new_tokens: int = 128,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Train `model` in place on the stored groups of `rounds` of a run (no sampling); returns
    `train_policy_gradient`'s stats plus `examples` (stored completions) and `rounds`."""
    groups, behaviour, _ = stored_groups(run_dir, rounds, model_cfg)
    stats = train_policy_gradient(
        model,
        groups,
        cfg,
        rl,
        seed,
        algorithm,
        max_new_tokens=max_new_tokens,
        on_step=on_step,
        behaviour=list(behaviour),
    )
    return stats | {"examples": sum(len(g.completions) for g in groups), "rounds": list(rounds)}
