"""Does a tiny abacus model confuse digit indices it never saw together? (docs/easy-to-hard.md,
sixth series.) Prints the cosine between the abacus embeddings of indices 1..12 and 1..14, and,
for each level, layer-0 attention at the `=` (which predicts the units digit): the share on the
operands' units digits (index 1) per head, and head HEAD's mean logit per key position.

    python benchmarks/easy_to_hard/abacus_aliasing.py RUN_DIR ROUND [LEVELS=5,6,7] [HEAD=2]
"""

from __future__ import annotations

import random
import sys

import torch
import torch.nn.functional as F
import yaml

from reasonloop.config import RunConfig
from reasonloop.models.tiny import RMS_EPS, TinyModel, digit_runs
from reasonloop.models.tokenizer import BOS_ID
from reasonloop.tasks.families.addition import AdditionFamily


def main(run: str, rnd: int, levels: list[int], head: int) -> None:
    torch.set_num_threads(1)
    cfg = RunConfig(**yaml.safe_load(open(f"{run}/config.yaml")))
    family = AdditionFamily(**(cfg.tasks.options or {}))
    model = TinyModel.load(f"{run}/checkpoints/r{rnd:03d}")
    mod = model.module.eval()
    rows = F.normalize(mod.abacus.weight.detach()[1:15], dim=1)
    print("cosine of abacus indices (rows 1..12, columns 1..14)")
    for i, row in enumerate((rows @ rows.T)[:12]):
        print(f"{i + 1:>2} " + " ".join(f"{v:+.1f}" for v in row.tolist()))
    rng = random.Random(7)
    with torch.no_grad():
        for level in levels:
            tasks = [family.make(rng, level) for _ in range(100)]
            ids = torch.tensor(
                [[BOS_ID, *model.tokenizer.encode(t.prompt + t.answer)] for t in tasks]
            )
            runs = digit_runs(ids, mod.abacus_anchor)
            x = mod.embed(ids) + mod.abacus(mod.abacus_index(runs))
            layer = mod.layers[0]
            B, T, D = x.shape
            h = F.rms_norm(x, (D,), layer.attn_norm, RMS_EPS)
            qkv = layer.wqkv(h).view(B, T, 3, layer.n_heads, layer.head_dim)
            q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
            logits = (q @ k.transpose(-1, -2)) * layer.head_dim**-0.5
            eq = len(tasks[0].prompt)  # the `=` (position 0 is bos)
            p = logits[:, :, eq, : eq + 1].softmax(-1)
            units = [j for j in range(eq) if runs[0, j].item() == 1]
            share = p[:, :, units].sum(-1).mean(0)
            print(f"L{level}: attention share on the units digits per head", share.tolist())
            text = "^" + tasks[0].prompt
            keys = logits[:, head, eq, : eq + 1].mean(0)
            print(
                f"  head {head} logits (token, index: logit): "
                + " ".join(f"{text[j]},{runs[0, j].item()}:{keys[j]:.1f}" for j in range(eq + 1))
            )


if __name__ == "__main__":
    a = sys.argv
    main(
        a[1],
        int(a[2]),
        [int(x) for x in a[3].split(",")] if len(a) > 3 else [5, 6, 7],
        int(a[4]) if len(a) > 4 else 2,
    )
