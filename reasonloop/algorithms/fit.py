"""The training loop the learned judges share (ORM, Bradley-Terry RM, PRM, implicit reward).

Each judge brings only its loss for a batch of example indices; the loop is the same for all:
`cfg`'s AdamW and schedule (`optim.py`) over shuffled batches (bucketed by length when `cfg`
says, `sft.batches`), one backward and one clipped step per batch, the module in train mode
and given back in the mode it was in. The policy trainers (`sft.py`, `dpo.py`,
`policy_gradient.py`) keep loops of their own: they shard batches over torchrun ranks and FSDP.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from reasonloop.algorithms.optim import adamw, clip_and_step, lr_at, set_lr
from reasonloop.algorithms.sft import batches
from reasonloop.config import TrainConfig


def fit(
    module: torch.nn.Module,
    cfg: TrainConfig,
    lengths: Sequence[int],
    seed: int,
    batch_loss: Callable[[list[int]], torch.Tensor],
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Train `module` in place: `cfg.steps` steps (or `cfg.epochs` passes over the
    `len(lengths)` examples), each on `batch_loss(indices of the batch)`.

    The same seed gives the same batches; torch's global random state is left as it was (a
    backend with dropout draws from a stream seeded by `seed`). Returns steps, seconds, losses
    (one per step), loss_first and loss_last (None without examples); `on_step` gets {step
    (0-based), loss, lr} after each step."""
    out: dict[str, Any] = {
        "steps": 0,
        "seconds": 0.0,
        "losses": [],
        "loss_first": None,
        "loss_last": None,
    }
    if not lengths:
        return out
    total = cfg.steps or math.ceil(cfg.epochs * len(lengths) / cfg.batch_size)
    opt = adamw(module, cfg)
    rng = random.Random(seed)
    was_training = module.training
    module.train()
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for step, idx in enumerate(
                batches(list(lengths), cfg.batch_size, total, rng, cfg.bucket_by_length)
            ):
                lr = lr_at(step, total, cfg)
                set_lr(opt, lr)
                loss = batch_loss(idx)
                loss.backward()
                clip_and_step(opt, cfg)
                value = float(loss.detach())
                out["losses"].append(value)
                if on_step is not None:
                    on_step({"step": step, "loss": value, "lr": lr})
    finally:
        module.train(was_training)
    out["steps"] = len(out["losses"])
    out["seconds"] = time.perf_counter() - start
    out["loss_first"], out["loss_last"] = out["losses"][0], out["losses"][-1]
    return out
