"""The optimiser every training phase shares: AdamW with decay on matrices only, linear warmup then
cosine decay to `min_lr_ratio`, global gradient-norm clipping (all settings from `TrainConfig`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from reasonloop.config import TrainConfig


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step `step` (0-based) out of `total`.

    Warmup rises linearly to cfg.lr over the first `warmup_steps` steps (step 0 already moves, at
    lr / warmup_steps); the cosine then falls from cfg.lr to cfg.lr * min_lr_ratio at the last step.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = total - cfg.warmup_steps - 1
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def adamw(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay applies to matrices (ndim >= 2) only,
    never to norms' gains or biases."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # torch's fused kernel updates each tensor in one pass: 3x faster than foreach on CPU (about
    # 2 ms of a 110 ms SFT step at dim 128). It takes plain CPU or CUDA tensors; sharded
    # (FSDP's DTensor) or other parameters keep the foreach path.
    fused = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, **({"fused": True} if fused else {"foreach": True})
    )


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def clip_and_step(opt: torch.optim.Optimizer, cfg: TrainConfig) -> float:
    """Clip the global gradient norm to cfg.grad_clip, step, zero the gradients. Returns the
    norm before clipping."""
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
    opt.step()
    if opt.defaults.get("fused"):
        # The fused kernel writes the weights without bumping their version counters, which
        # is how the tiny backend knows its decode copy is stale (`TinyModel._decode_module`).
        torch.autograd.graph.increment_version(params)
    opt.zero_grad(set_to_none=True)
    return float(norm)


def record_step(
    stats: dict,
    step: int,
    loss: float,
    tokens: int,
    t0: float,
    lr: float,
    on_step: Callable[[dict], None] | None,
) -> None:
    """Book optimiser step `step` (0-based) in a trainer's stats (steps, losses, tokens, seconds,
    tokens_per_s) and report {step, loss, lr, tokens_per_s, tokens (this step's)} to `on_step`."""
    stats["steps"] = step + 1
    stats["losses"].append(loss)
    stats["tokens"] += tokens
    stats["seconds"] = time.perf_counter() - t0
    stats["tokens_per_s"] = stats["tokens"] / max(stats["seconds"], 1e-9)
    if on_step is not None:
        on_step(
            {
                "step": step + 1,
                "loss": loss,
                "lr": lr,
                "tokens_per_s": stats["tokens_per_s"],
                "tokens": tokens,
            }
        )
