"""Sharded training under torchrun for the hf backend (`model.distributed.strategy: fsdp`).

`sharded(model)` wraps a trainer's optimisation loop. Inside it, `model.module` is a twin of the
network whose parameters PyTorch's FSDP2 (`fully_shard`) has split over the ranks: one FSDP unit
per decoder layer (the model's `_no_split_modules`) plus the root for the rest, so each rank
holds 1/world of the parameters, of their gradients and of AdamW's state, and a layer's full
weights exist only while it runs. When the block ends the full weights are gathered back into
the model's own parameters on every rank, so rank 0 generates and saves exactly as after an
all-reduce phase, and the next phase starts from them (`distributed.broadcast_module`).

Why a twin rather than sharding the network in place: FSDP2 has no inverse of `fully_shard`
(it swaps module classes and installs hooks for good), while generation, checkpoints, the
frozen passes before the loop and every copy of the model (DPO's reference, PPO's critic) need
a plain network. The twin is a structural copy that shares the original's parameter and buffer
objects, so making it costs no memory; `fully_shard` then gives the twin sharded copies and
leaves the originals, whose storage is released until the gather puts the trained weights back.

The trainers' arithmetic is unchanged: each rank's loss is already weighted by its share of the
global batch (`distributed.weight`), so FSDP is set to sum gradients rather than average them,
and `distributed.sync_grads` leaves the sharded (DTensor) gradients alone while it sums the
batch statistics and any parameters FSDP does not own (PPO's critic). Clipping and AdamW run on
the shards (`clip_grad_norm_` computes the global norm across them).

Outside torchrun, or with `strategy: allreduce`, `sharded` does nothing.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from reasonloop import distributed
from reasonloop.models.base import LanguageModel


def enabled(model: LanguageModel) -> bool:
    """Whether `model` trains sharded here: FSDP is its strategy and this process is one rank of
    several."""
    cfg = getattr(model, "config", None)
    strategy = getattr(getattr(cfg, "distributed", None), "strategy", "allreduce")
    return strategy == "fsdp" and distributed.active()


@contextmanager
def sharded(model: LanguageModel) -> Iterator[None]:
    """`model.module` is the FSDP-sharded twin inside the block (see the module docstring); every
    rank must enter and leave it together. A no-op unless `enabled(model)`."""
    if not enabled(model):
        yield
        return
    original = model.module
    twin = _shard(original)
    params = dict(original.named_parameters())
    for p in params.values():
        # The twin holds its shards; the full copies would double this rank's memory.
        p.data = p.data.new_empty(0)
    model.module = twin
    try:
        yield
    except BaseException:
        # No gather: another rank may be stuck in a collective, and the job is ending anyway.
        model.module = original
        raise
    shards = dict(twin.named_parameters())
    with torch.no_grad():
        for name, p in params.items():  # the same order on every rank: one all-gather each
            p.data = shards[name].full_tensor()
    model.module = original


def _shard(module: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import FSDPModule, fully_shard

    shared: dict[int, Any] = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    twin = copy.deepcopy(module, shared)
    mesh = _mesh(next(module.parameters()).device.type, dist.group.WORLD)
    blocks = set(_no_split_modules(twin))
    for m in list(twin.modules()):
        if m is not twin and type(m).__name__ in blocks:
            fully_shard(m, mesh=mesh)
    fully_shard(twin, mesh=mesh)
    for m in twin.modules():
        if isinstance(m, FSDPModule):
            # Sum, not mean: the ranks' losses are already their shares of the batch's mean. A
            # plain SUM reduce-scatter is also the one gloo has (no PREMUL_SUM).
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return twin


@functools.cache
def _mesh(device_type: str, group: Any) -> Any:
    """One device mesh over all ranks of the job (`group`, its default group): made once, not
    once per train phase."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (dist.get_world_size(group),))


def _no_split_modules(module: torch.nn.Module) -> list[str]:
    """Class names of the model's transformer blocks, as transformers declares them for
    splitting a model over devices (a peft model: its base model's)."""
    for m in module.modules():
        names = getattr(m, "_no_split_modules", None)
        if names:
            return list(names)
    return []
