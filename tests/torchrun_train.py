"""Run by tests/test_torchrun.py twice, as one plain process and under torchrun: SFT, DPO, GRPO and
PPO train the tiny model on fixed data; rank 0 writes each result's weights and per-step stats to
`OUT/<method>/` (weights) and `OUT/<method>.json` (stats), the other ranks write nothing.

The data sizes leave some global batches with fewer rows than ranks (33 SFT examples in
batches of 8 end each epoch with a batch of 1), and the model draws abacus offsets while
training, so both the stand-in rows and the per-row random draws are exercised.

    python tests/torchrun_train.py OUT
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/torchrun_train.py OUT
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from reasonloop import distributed
from reasonloop.algorithms.dpo import train_dpo
from reasonloop.algorithms.policy_gradient import Group, train_policy_gradient, train_ppo
from reasonloop.algorithms.sft import train_sft
from reasonloop.algorithms.value_head import Critic
from reasonloop.config import ModelConfig, PPOConfig, RLConfig, TrainConfig
from reasonloop.models.tiny import TinyModel
from reasonloop.types import PreferencePair, SFTExample

MODEL = ModelConfig(
    dim=32,
    n_layers=2,
    n_heads=2,
    max_seq_len=64,
    rope_theta=float("inf"),
    abacus=16,
    abacus_offset=4,
    threads=1,
)
SFT_STEPS = 20


def _sums(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(10 ** rng.randint(1, 4)), rng.randrange(10 ** rng.randint(1, 4))
        out.append((f"{a}+{b}=", a + b))
    return out


def main(out: Path) -> None:
    stats = {}
    sft = [
        SFTExample(prompt=p, completion=str(c), task_id=f"t{i}")
        for i, (p, c) in enumerate(_sums(33, 0))
    ]
    model = TinyModel.create(MODEL, seed=0)
    cfg = TrainConfig(steps=SFT_STEPS, batch_size=8, lr=3e-3, warmup_steps=2)
    stats["sft"] = (model, train_sft(model, sft, cfg, seed=1))

    pairs = [
        PreferencePair(prompt=p, chosen=str(c), rejected=str(c + 1 + i % 3), task_id=f"p{i}")
        for i, (p, c) in enumerate(_sums(13, 1))
    ]
    model, reference = TinyModel.create(MODEL, seed=2), TinyModel.create(MODEL, seed=2)
    cfg = TrainConfig(steps=10, batch_size=4, lr=3e-3, warmup_steps=2)
    stats["dpo"] = (model, train_dpo(model, reference, pairs, cfg, seed=3, rpo_alpha=0.5))

    groups = [
        Group(f"g{i}", p, [str(c), str(c + 1), str(c * 2 + 7)], [1.0, 0.0, float(i % 2)])
        for i, (p, c) in enumerate(_sums(6, 2))
    ]
    model, reference = TinyModel.create(MODEL, seed=4), TinyModel.create(MODEL, seed=4)
    cfg = TrainConfig(steps=10, batch_size=5, lr=3e-3, warmup_steps=2)
    rl = RLConfig(kl_beta=0.05, aggregation="token")
    stats["grpo"] = (
        model,
        train_policy_gradient(model, groups, cfg, rl, 5, "grpo", reference, 16),
    )

    model, reference = TinyModel.create(MODEL, seed=6), TinyModel.create(MODEL, seed=6)
    critic = Critic.from_policy(model)
    ppo = PPOConfig(kl_beta=0.05)
    stats["ppo"] = (model, train_ppo(model, critic, groups, cfg, ppo, 7, reference))

    if distributed.is_main():
        critic.save(out / "ppo-critic.safetensors")
        for name, (trained, s) in stats.items():
            trained.save(out / name)
            curves = {k: v for k, v in s.items() if isinstance(v, list)}
            (out / f"{name}.json").write_text(json.dumps(curves | {"steps": s["steps"]}))


if __name__ == "__main__":
    with distributed.process_group("cpu"):
        main(Path(sys.argv[1]))
