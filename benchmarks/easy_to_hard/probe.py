"""Greedy probe of a run's checkpoint (docs/easy-to-hard.md, sixth series): per level pass@1,
answers of the right length, answers cut by the token budget, and wrong digits by position.

    python benchmarks/easy_to_hard/probe.py RUN_DIR ROUND [LEVELS=6,7,8,9] [N=200]
"""

from __future__ import annotations

import random
import sys
from collections import Counter

import torch
import yaml

from reasonloop.config import RunConfig
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.tasks.families.addition import AdditionFamily


def main(run: str, rnd: int, levels: list[int], n: int) -> None:
    torch.set_num_threads(1)
    cfg = RunConfig(**yaml.safe_load(open(f"{run}/config.yaml")))
    family = AdditionFamily(**(cfg.tasks.options or {}))
    model = TinyModel.load(f"{run}/checkpoints/r{rnd:03d}")
    rng = random.Random(12345)
    greedy = Sampling(temperature=0, max_new_tokens=14)
    for level in levels:
        tasks = [family.make(rng, level) for _ in range(n)]
        comps = model.generate([t.prompt for t in tasks], 1, greedy)
        right, length_ok, cut, wrong_at = 0, 0, 0, Counter()
        for task, (c,) in zip(tasks, comps, strict=True):
            gold, text = task.answer, c.text.strip()
            right += text == gold
            length_ok += len(text) == len(gold)
            cut += not c.stopped
            wrong_at.update(i for i in range(len(gold)) if i >= len(text) or text[i] != gold[i])
        print(
            f"L{level}: pass {right / n:.3f} length_ok {length_ok / n:.2f} cut {cut / n:.2f} "
            f"wrong digits by position {[wrong_at[i] for i in range(level + 1)]}"
        )


if __name__ == "__main__":
    a = sys.argv
    main(
        a[1],
        int(a[2]),
        [int(x) for x in a[3].split(",")] if len(a) > 3 else [6, 7, 8, 9],
        int(a[4]) if len(a) > 4 else 200,
    )
