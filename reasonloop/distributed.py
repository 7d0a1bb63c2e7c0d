"""Data-parallel training under torchrun: the few collective pieces the loop and trainers use.

`torchrun --nproc_per_node N -m reasonloop.cli run ...` starts N processes. Rank 0 runs the loop
as a single process would and writes every file; at each train phase it sends the other ranks
an order (`send_order`), they read the round's records from the files rank 0 wrote and train
alongside it. Every trainer step then works on one global batch of `batch_size` rows, the same
batches a single process draws: each rank computes its rows (`shard`), scales its loss by its
share of the batch's normaliser (`weight`), and `sync_grads` sums the gradients, so every rank
steps on the single-process gradient of the whole batch (clipping sees that gradient too).

Gradients are summed by an explicit all-reduce rather than by wrapping the network in
`DistributedDataParallel`: the trainers reach the network through `model.forward`,
`model.hidden_states`, a critic's copy and frozen passes, all of which call `model.module`
directly, while DDP reduces only for forwards run through its wrapper; and DDP needs every rank
to run a forward each step, while a global batch smaller than the world leaves a rank without
rows. One bucketed all-reduce after backward costs DDP's communication without its overlap with
backward, which on CPU (gloo) at these model sizes is a few milliseconds a step.

With `model.distributed.strategy: fsdp` (hf backend) the trainers' loops run on a sharded twin
of the network instead (`fsdp.py`); the batches, shares and weights above stay the same, and
`sync_grads` then sums only the statistics and any unsharded parameters.

Outside torchrun (no WORLD_SIZE > 1 in the environment) every function here is a no-op that
returns its input, so the single-process path runs exactly as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.graph import increment_version

ORDER_TIMEOUT = timedelta(days=7)
"""How long the other ranks wait for rank 0's next order: rank 0 generates and evaluates alone
between train phases, which can take hours on a large model."""
BUCKET_ELEMENTS = 1 << 24
"""Gradient elements per all-reduce: one copy of this many stays in memory, not of the model."""

_control: Any = None
"""A gloo group for orders: CPU, long timeout, and no NCCL busy-waiting while rank 0 works."""
_batch: tuple[list[int], int] | None = None
"""(this rank's positions in the current global batch, its size), from `shard` to `sync_grads`."""


def rank() -> int:
    """This process's rank (0 outside torchrun): the joined group's, else torchrun's environment
    (known before the group exists)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0, the only rank that writes files and logs."""
    return rank() == 0


def active() -> bool:
    """Whether this process trains with others (a joined group of more than one rank)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def process_group(device: str = "cpu") -> Iterator[None]:
    """Join the job torchrun started for the block: gloo for a CPU model, nccl for CUDA (each rank
    on its GPU LOCAL_RANK, so a config's device `cuda` is that GPU). Nothing happens outside
    torchrun or when the caller has joined a group already (the caller then leaves it)."""
    global _control
    if world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        yield
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    yield
    # Not in a `finally`: after an error another rank may still wait in a collective, and
    # torchrun ends the job when any rank fails anyway.
    _control = None
    dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def _control_group() -> Any:
    global _control
    if _control is None:
        _control = dist.new_group(backend="gloo", timeout=ORDER_TIMEOUT)
    return _control


def send_order(order: Any) -> None:
    """Rank 0: send the other ranks their next order (any picklable object)."""
    if active():
        dist.broadcast_object_list([order], src=0, group=_control_group())


def receive_order() -> Any:
    """Other ranks: wait for rank 0's next order."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=_control_group())
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any: a decision that must be the same everywhere
    (stopping on a clock, which every rank reads differently)."""
    if not active():
        return flag
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return bool(t.item())


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (where a train phase starts: whatever each
    rank loaded, they then step identical weights with identical gradients)."""
    if not active():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)
        # A collective writes past autograd's version counter, which tells a model's cached
        # decode copy (`TinyModel._decode_module`) that its weights changed.
        increment_version(t)


def shard(idx: list[int]) -> list[int]:
    """This rank's rows of the global batch `idx`: every world-size-th row from its rank (strided,
    so a batch ordered by length spreads its long rows over the ranks). A rank past the end of a
    batch smaller than the world gets `idx[0]` as a stand-in whose `weight` is 0, so every rank
    runs the same forwards and draws the same random numbers. `idx` itself outside torchrun."""
    global _batch
    if not active() or not idx:
        return idx
    rows = list(range(dist.get_rank(), len(idx), dist.get_world_size())) or [0]
    _batch = (rows, len(idx))
    return [idx[i] for i in rows]


def weight(idx: list[int], size: Callable[[int], float] | None = None) -> float:
    """This rank's share of the normaliser of global batch `idx`: the sum of `size(i)` over its
    rows over the sum over all rows (`size` None: each row counts 1). A loss that is a mean over
    this rank's rows (or tokens), times this, summed over the ranks, is the mean over the whole
    batch. 1.0 outside torchrun."""
    if not active():
        return 1.0
    sizes = [1.0 if size is None else float(size(i)) for i in idx]
    total = sum(sizes)
    mine = sum(sizes[j] for j in range(dist.get_rank(), len(idx), dist.get_world_size()))
    return mine / total if total else 0.0


def global_rows(n: int) -> tuple[int, list[int] | None]:
    """For a training forward over `n` rows: the size of the global forward they belong to and
    their positions in it (None when not sharded: the n rows are the batch). A module that draws
    per-row random numbers (the tiny model's abacus offsets) draws for the global forward and
    keeps its rows, so each row gets the number a single process would give it.

    A forward of k times the rank's rows is taken as k blocks laid out like the batch (DPO's
    chosen rows, then its rejected rows), as the single process lays out k blocks of the batch."""
    if _batch is None or n % len(_batch[0]):
        return n, None
    rows, size = _batch
    k = n // len(rows)
    return k * size, [j * size + i for j in range(k) for i in rows]


def sync_grads(params: Iterable[torch.nn.Parameter], values: Sequence[float] = ()) -> list[float]:
    """Sum the parameters' gradients over the ranks, and `values` (each rank's weighted share of
    a batch statistic: the loss, a margin) with them; returns the summed values.

    A parameter no rank has a gradient for keeps none (so AdamW skips it, as in one process);
    one that some rank has none for gets the others' sum. A sharded (FSDP, DTensor) parameter is
    left alone: FSDP summed its gradient during backward (`fsdp.py`). Outside torchrun:
    `values`, unchanged.
    """
    global _batch
    if not active():
        return list(values)
    from torch.distributed.tensor import DTensor

    _batch = None
    params = [p for p in params if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    params = [p for p in params if not isinstance(p, DTensor)]
    if not params and not values:
        return []
    head = torch.tensor(
        [*values, *(float(p.grad is not None) for p in params)], dtype=torch.float64, device=device
    )
    dist.all_reduce(head)
    summed = head.tolist()
    used = [p for p, n in zip(params, summed[len(values) :], strict=True) if n > 0]
    for bucket in _buckets(used):
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
        )
        dist.all_reduce(flat)
        at = 0
        for p in bucket:
            g = flat[at : at + p.numel()].view_as(p)
            at += p.numel()
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
    return summed[: len(values)]


def _buckets(params: list[torch.nn.Parameter]) -> Iterator[list[torch.nn.Parameter]]:
    """Runs of parameters of one dtype and device, up to BUCKET_ELEMENTS each (a parameter
    larger than that is a bucket of its own)."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and (
            (p.dtype, p.device) != (bucket[0].dtype, bucket[0].device)
            or size + p.numel() > BUCKET_ELEMENTS
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket
