"""Shared-prefix training forward: the completions of one prompt read the prompt once.

GRPO and RLOO train on k completions of each prompt. Encoded one sequence per row, a
minibatch runs every prompt through the network k times. Here the completions of one prompt are
packed into one row after a single copy of it, `[prompt][c1][c2]...`, each completion's
positions starting where the prompt ends, under an attention mask that lets a completion see the
prompt and its own earlier tokens, never another completion. Log-probs and gradients equal the
row-per-sequence forward's up to float rounding (`tests/test_shared_prefix.py`), and the linear
layers' work falls by the prompt copies left out: for 3-digit sums (9 prompt tokens, 5 answer
tokens, groups of 8) from 8 x 13 inputs to 9 + 8 x 4.

One difference in training: the tiny model's random abacus offsets (`model.abacus_offset`) are
drawn per row, so the completions packed with one prompt share the prompt's draw where one row
a sequence draws for each (the prompt's digits and its completions' must shift together).

Dense attention over a packed row grows with its length squared, so a completion joins a row only
while that costs less than a row of its own under `cost(T) = T + T^2 * attention_cost`
(`attention_cost` ~ 1 / (6 dim): per token and layer the linear layers take about 24 dim^2
FLOPs, attention 4 T dim). Long completions of short prompts therefore stay one per row.

Only the completions of one prompt that share a minibatch can share its prompt, so the minibatch
layout (`group_batches`, `strategy.rl.minibatch`) sets how much is saved: whole groups (verl's
contiguous minibatches) save the most, groups spread over the steps keep every prompt in every
step and save less, random minibatches least. A model without `forward_tree` (the hf backend)
takes the row-per-sequence forward (`logprobs.token_logps`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from reasonloop.algorithms.logprobs import token_logps
from reasonloop.models.base import LanguageModel


@dataclass
class PrefixTree:
    """A batch of (token ids, prompt length) sequences, packed by shared prompt.

    R packed rows of width T hold the B sequences; each sequence's completion has at most S
    tokens (its stop newline included)."""

    inputs: torch.Tensor
    """[R, T] packed input ids: a prompt, then each of its sequences' completion inputs (the
    completion without its last token, which is only ever a label); padding past a row's end."""
    positions: torch.Tensor
    """[R, T] each token's position in its own sequence."""
    mask: torch.Tensor
    """[R, 1, T, T] bool: causal within a sequence, the prompt seen by all of its completions;
    a padding query sees itself only (no all-masked softmax row)."""
    rows: torch.Tensor
    """[B, Tf] each sequence's own inputs (ids without the last), right-padded: a token's
    per-sequence features (the tiny model's digit-run and problem indices) are read here."""
    source: torch.Tensor
    """[R, T] index into `rows.flatten()` of the token each packed position holds (0: padding)."""
    at: torch.Tensor
    """[B, S] index into the flattened [R * T] positions of the one whose logits predict
    completion token s of sequence b (the prompt's last position for s = 0)."""
    labels: torch.Tensor
    """[B, S] completion token ids (0 past a completion's end)."""
    label_mask: torch.Tensor
    """[B, S] bool: where `labels` holds a completion token."""


def _cost(tokens: int, attention_cost: float) -> float:
    return tokens + tokens * tokens * attention_cost


def pack(
    batch: list[tuple[list[int], int]], pad_id: int, attention_cost: float = 0.0
) -> PrefixTree:
    """Pack `batch` (`sft.encode_example`'s (ids, prompt length) pairs) by identical prompt ids.

    A prompt's sequences fill rows in order; a sequence joins the open row while
    `cost(row + its completion) - cost(row) <= cost(prompt + its completion)`."""
    if not batch:
        raise ValueError("pack needs at least one sequence")
    for b, (ids, p_len) in enumerate(batch):
        if not 1 <= p_len < len(ids):
            raise ValueError(
                f"sequence {b}: prompt length {p_len} must leave at least one completion "
                f"token of its {len(ids)}"
            )
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for b, (ids, p_len) in enumerate(batch):
        by_prompt.setdefault(tuple(ids[:p_len]), []).append(b)
    packed: list[list[int]] = []  # sequence indices per row, the first one's prompt leads
    for members in by_prompt.values():
        p_len = batch[members[0]][1]
        row: list[int] = []
        width = p_len
        for b in members:
            extra = len(batch[b][0]) - p_len - 1
            joined = _cost(width + extra, attention_cost) - _cost(width, attention_cost)
            if row and joined > _cost(p_len + extra, attention_cost):
                packed.append(row)
                row, width = [], p_len
            row.append(b)
            width += extra
        packed.append(row)

    # Built as Python lists and turned into tensors once: a few small tensor ops per sequence
    # would cost more than the packing saves on the short sequences it is for.
    B, S = len(batch), max(len(ids) - p for ids, p in batch)
    Tf = max(len(ids) for ids, _ in batch) - 1
    inputs: list[list[int]] = []
    positions: list[list[int]] = []
    branch: list[list[int]] = []  # 0 the prompt, j + 1 the row's j-th sequence
    source: list[list[int]] = []
    at_row, at_pos = [0] * B, [[0] * S for _ in range(B)]
    labels = [[0] * S for _ in range(B)]
    for r, members in enumerate(packed):
        first, p_len = members[0], batch[members[0]][1]
        row = batch[first][0][:p_len]
        pos, br = list(range(p_len)), [0] * p_len
        src = list(range(first * Tf, first * Tf + p_len))
        for j, b in enumerate(members):
            ids = batch[b][0]
            n = len(ids) - p_len  # completion tokens, the stop newline included
            start = len(row)
            row += ids[p_len:-1]
            pos += range(p_len, p_len + n - 1)
            br += [j + 1] * (n - 1)
            src += range(b * Tf + p_len, b * Tf + p_len + n - 1)
            # Token s of the completion is predicted at the position before it: the prompt's
            # last for s = 0, then the completion's own inputs.
            at_row[b] = r
            at_pos[b][:n] = [p_len - 1, *range(start, start + n - 1)]
            labels[b][:n] = ids[p_len:]
        inputs.append(row)
        positions.append(pos)
        branch.append(br)
        source.append(src)
    T = max(len(x) for x in inputs)

    def padded(rows: list[list[int]], fill: int) -> torch.Tensor:
        return torch.tensor([x + [fill] * (T - len(x)) for x in rows], dtype=torch.long)

    ids_full = torch.tensor([ids[:-1] + [pad_id] * (Tf + 1 - len(ids)) for ids, _ in batch])
    n_tokens = torch.tensor([len(ids) - p for ids, p in batch])
    label_mask = torch.arange(S)[None, :] < n_tokens[:, None]
    at = torch.tensor(at_row)[:, None] * T + torch.tensor(at_pos)
    tree_branch = padded(branch, -1)
    q, k = tree_branch[:, :, None], tree_branch[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = causal & (k >= 0) & ((k == 0) | (k == q))
    mask |= torch.eye(T, dtype=torch.bool)
    return PrefixTree(
        inputs=padded(inputs, pad_id),
        positions=padded(positions, 0),
        mask=mask[:, None],
        rows=ids_full,
        source=padded(source, 0),
        at=at * label_mask,
        labels=torch.tensor(labels),  # zero past each completion's end, as built
        label_mask=label_mask,
    )


def shared_token_logps(
    model: LanguageModel, batch: list[tuple[list[int], int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`logprobs.token_logps` through a `PrefixTree`: log p(token) of each completion token
    [B, S] (0 elsewhere) and the completion mask [B, S], completion tokens from column 0. A
    model without `forward_tree` takes the row-per-sequence path (a [B, T] layout)."""
    forward_tree = getattr(model, "forward_tree", None)
    if forward_tree is None:
        return token_logps(model, batch)
    dim = getattr(getattr(model, "config", None), "dim", 0)
    tree = pack(batch, model.tokenizer.pad_id, 1.0 / (6 * dim) if dim else 0.0)
    device = next(model.module.parameters()).device
    logits = forward_tree(tree)  # [R, T, V]
    picked = logits.reshape(-1, logits.shape[-1])[tree.at.to(device)]  # [B, S, V]
    logp = torch.log_softmax(picked.float(), -1)
    labels, mask = tree.labels.to(device), tree.label_mask.to(device)
    token = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return token * mask, mask


def group_batches(
    groups: list[list[int]],
    batch_size: int,
    steps: int,
    rng: random.Random,
    spread: bool = False,
) -> Iterator[list[int]]:
    """`steps` minibatches of sequence indices, epoch after epoch, from `groups` (the index lists
    of one prompt's completions). Each epoch shuffles the groups, and

    - whole (`spread` False): lays them end to end and cuts every `batch_size`, so a minibatch
      holds few prompts with all of their completions (a group is split only where a cut falls
      inside it);
    - spread: shuffles each group too and deals the completions round-robin (the first of every
      group, then the second, ...) before cutting, so every minibatch holds as many prompts as
      it can, each with a few completions: 32 groups of 8 in minibatches of 64 give each step
      all 32 prompts, two completions each."""
    made = 0
    while groups:
        order = [g[:] for g in groups]
        rng.shuffle(order)
        if spread:
            for g in order:
                rng.shuffle(g)
            longest = max(len(g) for g in order)
            flat = [g[j] for j in range(longest) for g in order if j < len(g)]
        else:
            flat = [i for g in order for i in g]
        for s in range(0, len(flat), batch_size):
            if made == steps:
                return
            made += 1
            yield flat[s : s + batch_size]
