"""Shared-prefix training forward (`algorithms/shared_prefix.py`): a group's prompt runs once,
and log-probs, gradients and trained weights equal the row-per-sequence path's."""

from __future__ import annotations

import random

import pytest
import torch

from reasonloop.algorithms.logprobs import frozen_token_logps, token_logps
from reasonloop.algorithms.policy_gradient import Group, train_policy_gradient
from reasonloop.algorithms.sft import encode_example
from reasonloop.algorithms.shared_prefix import (
    group_batches,
    pack,
    shared_token_logps,
)
from reasonloop.config import ModelConfig, RLConfig, TrainConfig
from reasonloop.models.tiny import TinyModel
from reasonloop.types import SFTExample

ROPE = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64)
ABACUS = ModelConfig(
    dim=32, n_layers=2, n_heads=4, max_seq_len=64, rope_theta=float("inf"), abacus=32,
    abacus_anchor="=",
)  # fmt: skip


def _batch(model: TinyModel, seed: int = 0) -> list[tuple[list[int], int]]:
    """Groups of 1-5 completions of prompts of several lengths, shuffled together: all-digit
    completions (so a packed row puts one's digits right after another's), step-format ones,
    and a bare stop newline."""
    rng = random.Random(seed)
    out = []
    for _ in range(6):
        prompt = f"{rng.randint(0, 10 ** rng.randint(1, 4))}+{rng.randint(0, 999)}="
        for _ in range(rng.randint(1, 5)):
            completion = rng.choice(
                [str(rng.randint(0, 10 ** rng.randint(1, 6))), "1+2+0=3;4+5+0=9#93", ""]
            )
            out.append(encode_example(model.tokenizer, SFTExample(prompt, completion)))
    rng.shuffle(out)
    return out


def _rows(logps: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [row[m.bool()] for row, m in zip(logps, mask, strict=True)]


@pytest.mark.parametrize("cfg", [ROPE, ABACUS], ids=["rope", "nope-abacus"])
def test_log_probs_and_gradients_equal_the_row_per_sequence_forward(cfg):
    model = TinyModel.create(cfg, 0)
    batch = _batch(model)
    params = list(model.module.parameters())
    a, am = token_logps(model, batch)
    grads_a = torch.autograd.grad((a * torch.linspace(1, 2, a.shape[1])).sum(), params)
    b, bm = shared_token_logps(model, batch)
    assert b.shape[0] == len(batch) and b.shape[1] == max(len(s) - p for s, p in batch)
    rows_a, rows_b = _rows(a, am), _rows(b, bm)
    for (ids, p_len), ra, rb in zip(batch, rows_a, rows_b, strict=True):
        assert len(ra) == len(rb) == len(ids) - p_len
        assert torch.allclose(ra, rb, atol=1e-5)
    # the same weighting of each token as above, now in the [B, S] layout
    weight = torch.zeros_like(b)
    for r, (ids, p_len) in enumerate(batch):
        weight[r, : len(ids) - p_len] = torch.linspace(1, 2, a.shape[1])[p_len - 1 : len(ids) - 1]
    grads_b = torch.autograd.grad((b * weight).sum(), params)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, atol=1e-5)
    assert max(g.abs().max().item() for g in grads_a) > 1e-3  # real gradients, not zeros


def test_packing_puts_a_group_in_one_row_and_reads_each_prompt_once():
    model = TinyModel.create(ROPE, 0)
    batch = _batch(model, seed=1)
    prompts = {tuple(s[:p]) for s, p in batch}
    tree = pack(batch, model.tokenizer.pad_id)
    assert tree.inputs.shape[0] == len(prompts)
    assert tree.label_mask.sum().item() == sum(len(s) - p for s, p in batch)
    packed = (tree.inputs != model.tokenizer.pad_id).sum().item()
    assert packed == sum(len(p) for p in prompts) + sum(len(s) - p - 1 for s, p in batch)


def test_a_completion_sees_its_prompt_and_itself_never_a_sibling():
    tok = TinyModel.create(ROPE, 0).tokenizer
    batch = [encode_example(tok, SFTExample("7+8=", c)) for c in ("15", "16")]
    tree = pack(batch, tok.pad_id)
    # [<s> 7 + 8 =][1 5][1 6]: the prompt 0-4, then each completion's inputs (not its newline)
    assert tree.inputs[0].tolist() == batch[0][0][:5] + tok.encode("15") + tok.encode("16")
    assert tree.positions[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 5, 6]
    sees = tree.mask[0, 0]
    assert sees[6].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert sees[8].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 7, 8]
    # "1" of both completions is predicted at the prompt's last position (4)
    assert tree.at[:, 0].tolist() == [4, 4] and tree.at[1].tolist() == [4, 7, 8]


def test_attention_cost_keeps_long_completions_of_a_short_prompt_apart():
    model = TinyModel.create(ROPE, 0)
    tok = model.tokenizer
    long = [encode_example(tok, SFTExample("1+1=", "9" * 40 + str(i))) for i in range(4)]
    assert pack(long, tok.pad_id, 0.0).inputs.shape[0] == 1
    # 1 / (6 x 32): a row of four 41-token completions costs more than four rows
    assert pack(long, tok.pad_id, 1 / (6 * 32)).inputs.shape[0] > 1
    b, bm = shared_token_logps(model, long)
    a, am = token_logps(model, long)
    for ra, rb in zip(_rows(a, am), _rows(b, bm), strict=True):
        assert torch.allclose(ra, rb, atol=1e-5)


def test_a_packed_sequence_keeps_its_own_abacus_shift_in_training():
    """With per-problem abacus offsets, a one-sequence tree draws the same shifts as its row
    (same RNG), so the digit-run and problem indices it passes in are the sequence's own."""
    cfg = ABACUS.model_copy(update={"abacus_offset": 5, "abacus_offset_per_problem": True})
    model = TinyModel.create(cfg, 0)
    with torch.no_grad():  # abacus rows large enough that a shift moves the log-probs
        model.module.abacus.weight[1:].normal_(std=1.0)
    model.module.train()
    seq = [encode_example(model.tokenizer, SFTExample("123+4567=", "4690"))]
    torch.manual_seed(7)
    a, am = token_logps(model, seq)
    torch.manual_seed(7)
    b, bm = shared_token_logps(model, seq)
    assert torch.allclose(a[am.bool()], b[bm.bool()], atol=1e-5)
    shifted = []
    for seed in range(8, 14):  # other draws: some shift differs, and so do the log-probs
        torch.manual_seed(seed)
        c, cm = shared_token_logps(model, seq)
        shifted.append(not torch.allclose(b[bm.bool()], c[cm.bool()], atol=1e-3))
    assert any(shifted)


def test_group_batches_keep_groups_whole_and_cover_every_index_each_epoch():
    groups = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13]]
    out = list(group_batches(groups, 4, 7, random.Random(0)))
    assert len(out) == 7
    epoch = [i for b in out[:4] for i in b]
    assert sorted(epoch) == list(range(14))
    for g in groups:  # contiguous, in order, within the epoch's sequence
        start = epoch.index(g[0])
        assert epoch[start : start + len(g)] == g
    assert list(group_batches([], 4, 3, random.Random(0))) == []
    spread = list(group_batches(groups, 4, 4, random.Random(0), spread=True))
    assert sorted(i for b in spread for i in b) == list(range(14))
    # the first minibatch holds one completion of each of the four groups
    assert sorted(i // 4 for i in spread[0]) == [0, 1, 2, 3]


def test_bad_sequences_are_refused_by_index():
    with pytest.raises(ValueError, match="sequence 1: prompt length 3"):
        pack([([1, 2, 3], 2), ([1, 2, 3], 3)], 0)
    with pytest.raises(ValueError, match="at least one sequence"):
        pack([], 0)


def test_grpo_with_shared_prompts_trains_the_same_weights():
    """One minibatch holding every group: the same loss, so the same step, to float rounding;
    then several minibatches of whole groups still learn (the rewarded completion gains)."""
    model = TinyModel.create(ROPE, 0)
    groups = [
        Group(f"t{a}{b}", f"{a}+{b}=", [str(a + b + d) for d in range(4)], [1.0, 0.0, 0.0, 0.0])
        for a in range(5)
        for b in range(3)
    ]
    one = TrainConfig(steps=1, batch_size=60, lr=3e-3, warmup_steps=0)
    x, y = model.copy(), model.copy()
    sx = train_policy_gradient(x, groups, one, RLConfig(), seed=0)
    sy = train_policy_gradient(
        y, groups, one, RLConfig(share_prompts=True, minibatch="groups"), seed=0
    )
    assert sx["losses"] == pytest.approx(sy["losses"], abs=1e-6)
    moved = 0.0
    for px, py, p0 in zip(
        x.module.parameters(), y.module.parameters(), model.module.parameters(), strict=True
    ):
        assert torch.allclose(px, py, atol=1e-5)
        moved = max(moved, (px - p0).abs().max().item())
    assert moved > 1e-4  # the step moved the weights, so the agreement says something

    seqs = [
        encode_example(model.tokenizer, SFTExample(g.prompt, c))
        for g in groups
        for c in g.completions
    ]
    before = torch.stack([r.sum() for r in frozen_token_logps(model, seqs)]).view(15, 4)
    many = TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=2)
    z = model.copy()
    rl = RLConfig(share_prompts=True, minibatch="groups")
    train_policy_gradient(z, groups, many, rl, seed=0)
    after = torch.stack([r.sum() for r in frozen_token_logps(z, seqs, shared_token_logps)]).view(
        15, 4
    )
    assert ((after - before)[:, 0] > 0).float().mean() >= 0.9
    assert (after.argmax(1) == 0).float().mean() >= 0.9


def test_a_model_without_forward_tree_takes_the_row_per_sequence_path(tmp_path):
    pytest.importorskip("transformers")
    from reasonloop.models.hf import HFModel

    TinyModel.create(ROPE, 0).export_hf(tmp_path / "hf")
    hf = HFModel.load(tmp_path / "hf")
    assert not hasattr(hf, "forward_tree")
    batch = _batch(hf)
    a, am = token_logps(hf, batch)
    b, bm = shared_token_logps(hf, batch)
    assert torch.equal(a, b) and torch.equal(am, bm)
