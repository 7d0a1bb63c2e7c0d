"""Run by tests/test_fsdp.py as one plain process and under torchrun with two ranks: SFT (full,
tied embeddings, LoRA), DPO, GRPO and PPO train a small hf-backend Llama with
`model.distributed.strategy: fsdp`, on fixed data. Rank 0 writes each result's weights
(`OUT/<method>/`, `model.save`), per-step stats and a greedy generation after training
(`OUT/<method>.json`); every rank writes what it held during training (`OUT/<method>.rank<r>.json`: parameter
elements of the network it trained, its own shards of them, and what the model's own
parameters still held), which a plain process leaves out.

    python tests/torchrun_fsdp.py OUT
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/torchrun_fsdp.py OUT
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from reasonloop import distributed
from reasonloop.algorithms.dpo import train_dpo
from reasonloop.algorithms.policy_gradient import Group, train_policy_gradient, train_ppo
from reasonloop.algorithms.sft import train_sft
from reasonloop.algorithms.value_head import Critic
from reasonloop.config import (
    DistributedConfig,
    LoRAConfig,
    ModelConfig,
    PPOConfig,
    RLConfig,
    TrainConfig,
)
from reasonloop.models.base import Sampling
from reasonloop.models.hf import HFModel
from reasonloop.types import PreferencePair, SFTExample

LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
SFT_STEPS = 20
PROMPTS = ["12+34=", "7+8=", "305+61="]


def model_config(hf: dict | None = None, lora: LoRAConfig | None = None) -> ModelConfig:
    return ModelConfig(
        backend="hf",
        hf_config=LLAMA | (hf or {}),
        lora=lora,
        threads=1,
        distributed=DistributedConfig(strategy="fsdp"),
    )


def _sums(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(10 ** rng.randint(1, 4)), rng.randrange(10 ** rng.randint(1, 4))
        out.append((f"{a}+{b}=", a + b))
    return out


def held(model: HFModel) -> Callable[[dict], None]:
    """An `on_step` that records, on the first step, the parameter elements of the network in
    training (`total`), this rank's part of them (`local`: its shards of sharded parameters,
    whole tensors of the rest) and what the model's own network still holds (`full`)."""
    seen: dict[str, int] = {}
    own = model.module

    def on_step(_: dict) -> None:
        if seen:
            return
        local = total = 0
        for p in model.module.parameters():
            to_local = getattr(p, "to_local", None)
            local += (to_local() if to_local else p).numel()
            total += p.numel()
        full = sum(p.numel() for p in own.parameters())
        seen.update(local=local, total=total, full=full)

    on_step.seen = seen  # type: ignore[attr-defined]
    return on_step


def main(out: Path) -> None:
    results: dict[str, tuple[HFModel, dict, dict[str, int]]] = {}
    sft = [
        SFTExample(prompt=p, completion=str(c), task_id=f"t{i}")
        for i, (p, c) in enumerate(_sums(33, 0))
    ]
    cfg = TrainConfig(steps=SFT_STEPS, batch_size=8, lr=3e-3, warmup_steps=2)
    variants = {
        "sft": model_config(),
        "sft-tied": model_config(hf={"tie_word_embeddings": True}),
        "sft-lora": model_config(lora=LoRAConfig(r=4, alpha=8)),
    }
    for name, mcfg in variants.items():
        model = HFModel.from_config(mcfg, seed=0)
        hook = held(model)
        results[name] = (model, train_sft(model, sft, cfg, seed=1, on_step=hook), hook.seen)

    pairs = [
        PreferencePair(prompt=p, chosen=str(c), rejected=str(c + 1 + i % 3), task_id=f"p{i}")
        for i, (p, c) in enumerate(_sums(13, 1))
    ]
    model = HFModel.from_config(model_config(), seed=2)
    reference = model.copy()
    cfg = TrainConfig(steps=10, batch_size=4, lr=3e-3, warmup_steps=2)
    hook = held(model)
    stats = train_dpo(model, reference, pairs, cfg, seed=3, rpo_alpha=0.5, on_step=hook)
    results["dpo"] = (model, stats, hook.seen)

    groups = [
        Group(f"g{i}", p, [str(c), str(c + 1), str(c * 2 + 7)], [1.0, 0.0, float(i % 2)])
        for i, (p, c) in enumerate(_sums(6, 2))
    ]
    model = HFModel.from_config(model_config(), seed=4)
    reference = model.copy()
    cfg = TrainConfig(steps=10, batch_size=5, lr=3e-3, warmup_steps=2)
    rl = RLConfig(kl_beta=0.05, aggregation="token")
    hook = held(model)
    stats = train_policy_gradient(model, groups, cfg, rl, 5, "grpo", reference, 16, hook)
    results["grpo"] = (model, stats, hook.seen)

    model = HFModel.from_config(model_config(), seed=6)
    reference = model.copy()
    critic = Critic.from_policy(model)
    hook = held(model)
    stats = train_ppo(model, critic, groups, cfg, PPOConfig(kl_beta=0.05), 7, reference, hook)
    results["ppo"] = (model, stats, hook.seen)

    rank = distributed.rank()
    greedy = Sampling(temperature=0.0, max_new_tokens=8)
    for name, (trained, s, seen) in results.items():
        if distributed.active():
            (out / f"{name}.rank{rank}.json").write_text(json.dumps(seen))
        if not distributed.is_main():
            continue
        trained.save(out / name)
        curves = {k: v for k, v in s.items() if isinstance(v, list)}
        # Rank 0 alone: the gathered weights must generate without the other rank.
        texts = [c[0].text for c in trained.generate(PROMPTS, 1, greedy)]
        (out / f"{name}.json").write_text(
            json.dumps(curves | {"steps": s["steps"], "generated": texts})
        )
    if distributed.is_main():
        critic.save(out / "ppo-critic.safetensors")
    distributed.barrier()


if __name__ == "__main__":
    torch.set_num_threads(1)
    with distributed.process_group("cpu"):
        main(Path(sys.argv[1]))
