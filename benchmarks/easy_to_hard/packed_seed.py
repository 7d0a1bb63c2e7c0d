"""The packed seed of docs/easy-to-hard.md (sixth series), outside the loop: round 0's gold seed
examples (read from a run directory), half of them written after another seed problem in the
same sequence, each problem with its own random abacus offset, so that the learned abacus
embeddings meet indices further apart than one 1-5 digit problem holds. Numbers stay 1-5 digits.
The model is the preset's (learned abacus, anchor `=`, NoPE); saved to OUT, then greedy pass@1 on
100 tasks per level (pad_carry format, as the run directory's data).

    python benchmarks/easy_to_hard/packed_seed.py OUT RUN_DIR/rounds/r000 [STEPS=4000] [SHARE=.5]
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ModelConfig, TrainConfig
from reasonloop.loop.run import phase_seed
from reasonloop.loop.store import read_records
from reasonloop.models import tiny
from reasonloop.models.base import Sampling
from reasonloop.models.tokenizer import NEWLINE_ID
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.types import SFTExample


def hidden(self, ids, positions=None, mask=None, caches=None, last_only=False):
    """`TinyTransformer.hidden` (NoPE, abacus) with one offset per newline-separated problem."""
    runs = tiny.digit_runs(ids, self.abacus_anchor)
    if self.training and self.abacus_offset:
        seg = (ids == NEWLINE_ID).long().cumsum(1)
        seg = torch.cat([torch.zeros_like(seg[:, :1]), seg[:, :-1]], 1)  # a newline ends its own
        shift = torch.randint(0, self.abacus_offset + 1, (ids.shape[0], int(seg.max()) + 1))
        runs = torch.where(runs > 0, runs + shift.gather(1, seg), 0)
    x = self.embed(ids) + self.abacus(runs.clamp(max=self.abacus_max))
    for i, layer in enumerate(self.layers):
        x = layer(x, None, mask, None if caches is None else caches[i])
    if last_only:
        x = x[:, -1]
    return F.rms_norm(x, (self.dim,), self.norm, tiny.RMS_EPS)


def main(out: str, seed_dir: str, steps: int, share: float) -> None:
    torch.set_num_threads(1)
    tiny.TinyTransformer.hidden = hidden
    cfg = ModelConfig(
        dim=128,
        n_layers=4,
        n_heads=4,
        max_seq_len=64,
        rope_theta=float("inf"),
        abacus=32,
        abacus_offset=10,
        abacus_anchor="=",
        threads=1,
    )
    model = tiny.TinyModel.create(cfg, 0)
    data = read_records(Path(seed_dir) / "sft.parquet", SFTExample)
    rng = random.Random(5)
    packed = []
    for ex in data:
        if rng.random() < share:  # loss on the second problem only
            first = rng.choice(data)
            packed.append(
                SFTExample(
                    first.prompt + first.completion.rstrip("\n") + "\n" + ex.prompt,
                    ex.completion,
                    ex.task_id,
                )
            )
        else:
            packed.append(ex)
    tc = TrainConfig(lr=3e-3, steps=steps, batch_size=64, warmup_steps=50, bucket_by_length=False)
    losses: list[float] = []

    def on_step(s: dict) -> None:
        losses.append(s["loss"])
        if s["step"] % 250 == 249:
            print(f"step {s['step'] + 1} loss {sum(losses[-250:]) / 250:.4f}", flush=True)

    t0 = time.time()
    train_sft(model, packed, tc, phase_seed(0, 0, "train"), on_step=on_step)
    print(f"trained {time.time() - t0:.0f}s", flush=True)
    model.save(out)
    family, rng = AdditionFamily(pad_carry=True), random.Random(99)
    for level in range(1, 11):
        tasks = [family.make(rng, level) for _ in range(100)]
        comps = model.generate([t.prompt for t in tasks], 1, Sampling(0, max_new_tokens=14))
        right = sum(c.text == t.answer for t, (c,) in zip(tasks, comps, strict=True))
        print(f"L{level} pass@1 {right / 100:.2f}", flush=True)


if __name__ == "__main__":
    a = sys.argv
    main(a[1], a[2], int(a[3]) if len(a) > 3 else 4000, float(a[4]) if len(a) > 4 else 0.5)
