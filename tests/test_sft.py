"""SFT: the masked loss, the schedule, batching, and real training of a tiny model."""

from __future__ import annotations

import math
import random

import pytest
import torch

from reasonloop.algorithms.optim import adamw, lr_at
from reasonloop.algorithms.sft import batches, collate, encode_example, sft_loss, train_sft
from reasonloop.config import ModelConfig, TrainConfig
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.models.tokenizer import BOS_ID, NEWLINE_ID, PAD_ID, CharTokenizer
from reasonloop.types import SFTExample


def _copy_examples(n: int, seed: int) -> list[SFTExample]:
    rng = random.Random(seed)
    words = ("".join(rng.choices("abcdef", k=4)) for _ in range(n))
    return [SFTExample(w + "=", w, task_id=w) for w in words]


def _model() -> TinyModel:
    return TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=32), seed=0)


def test_sft_loss_against_hand_computed_values():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 2.0, 3.0]]], requires_grad=True)
    labels = torch.tensor([[1, 0, 2]])
    mask = torch.tensor([[True, False, True]])
    # position 0: uniform over 3 -> log 3; position 2: -log(e^3 / (e + e^2 + e^3))
    expected = (math.log(3) + math.log(math.e + math.e**2 + math.e**3) - 3) / 2
    loss = sft_loss(logits, labels, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[0, 1] == 0)  # an unmasked position gets no gradient
    assert sft_loss(logits, labels, torch.zeros_like(mask)).item() == 0.0
    # logits already at the masked positions (`model.forward(..., at=mask)`): the same loss
    assert sft_loss(logits[mask], labels, mask).item() == pytest.approx(expected, rel=1e-6)
    assert sft_loss(logits[:0, 0], labels, torch.zeros_like(mask)).item() == 0.0


def test_warmup_then_cosine_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    lrs = [lr_at(s, 13, cfg) for s in range(13)]
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lrs[8] == pytest.approx(0.55)  # halfway down the cosine: (1 + 0.1) / 2
    assert lrs[12] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    assert lr_at(0, 10, TrainConfig(lr=2.0, warmup_steps=0)) == pytest.approx(2.0)


def test_adamw_decays_matrices_only():
    model, cfg = _model(), TrainConfig(weight_decay=0.3, betas=(0.8, 0.9))
    decay, no_decay = adamw(model.module, cfg).param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(
        p.ndim == 1 for p in no_decay["params"]
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.module.parameters()))
    assert decay["betas"] == (0.8, 0.9)


def test_batches_cover_each_epoch_and_bucketing_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(200)]
    plain = list(batches(lengths, 10, 40, random.Random(1), bucket=False))
    bucketed = list(batches(lengths, 10, 40, random.Random(1), bucket=True))
    for got in (plain, bucketed):
        assert len(got) == 40
        for epoch in (got[:20], got[20:]):
            assert sorted(i for b in epoch for i in b) == list(range(200))

    def padding(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    assert padding(bucketed) < padding(plain) / 3
    assert list(batches(lengths, 10, 40, random.Random(1), bucket=True)) == bucketed


def test_only_the_completion_and_its_newline_carry_loss():
    tok = CharTokenizer()
    seq, p_len = encode_example(tok, SFTExample("ab=", "cd"))
    assert seq == [BOS_ID, *tok.encode("ab=cd"), NEWLINE_ID] and p_len == 4
    assert encode_example(tok, SFTExample("ab=", "cd\n"))[0] == seq  # no second newline
    inputs, labels, mask, attn = collate(
        [(seq, p_len), (seq[:3] + [NEWLINE_ID], 2)], PAD_ID, torch.device("cpu")
    )
    assert inputs[0].tolist() == seq[:-1] and labels[0].tolist() == seq[1:]
    assert tok.decode(labels[0][mask[0]].tolist()) == "cd\n"
    assert mask[1].tolist() == [False, True, True, False, False, False]
    assert attn[1].tolist() == [1, 1, 1, 0, 0, 0]
    assert inputs[1].tolist() == [*seq[:3], NEWLINE_ID, PAD_ID, PAD_ID]
    assert labels[1].tolist() == [*seq[1:3], NEWLINE_ID, PAD_ID, PAD_ID, PAD_ID]


def test_training_teaches_the_copy_task():
    model, steps = _model(), 150
    cfg = TrainConfig(steps=steps, batch_size=30, lr=5e-3, warmup_steps=10)
    train = _copy_examples(600, seed=0)  # 20 full batches an epoch
    seen = []
    stats = train_sft(model, train, cfg, seed=0, on_step=seen.append)
    assert stats["steps"] == steps and len(stats["losses"]) == steps
    assert stats["loss_first"] > 3.0 and stats["loss_last"] < 0.1
    assert stats["tokens"] == steps * 30 * 10  # "abcd=" + "abcd" + "\n" per example
    assert stats["tokens_per_s"] > 0 and stats["seconds"] > 0
    assert [s["step"] for s in seen] == list(range(1, steps + 1))
    assert [s["lr"] for s in seen] == pytest.approx([lr_at(i, steps, cfg) for i in range(steps)])
    assert model.module.training  # left as it was

    known = {ex.completion for ex in train}
    held_out = [ex for ex in _copy_examples(200, seed=1) if ex.completion not in known][:50]
    out = model.generate(
        [ex.prompt for ex in held_out], 1, Sampling(temperature=0, max_new_tokens=8)
    )
    correct = sum(o[0].text == ex.completion for o, ex in zip(out, held_out, strict=True))
    assert correct >= 0.95 * len(held_out)


def test_training_is_deterministic_and_stops_as_asked():
    examples = _copy_examples(50, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=16, warmup_steps=2)
    a, b = _model(), _model()
    sa, sb = train_sft(a, examples, cfg, seed=3), train_sft(b, examples, cfg, seed=3)
    assert sa["steps"] == math.ceil(2 * 50 / 16) and sa["losses"] == sb["losses"]
    assert all(
        torch.equal(x, y) for x, y in zip(a.module.parameters(), b.module.parameters(), strict=True)
    )
    assert train_sft(_model(), examples, cfg, seed=3, max_seconds=0.0)["steps"] == 1

    empty = train_sft(_model(), [], cfg, seed=0)
    assert empty["steps"] == 0 and empty["tokens"] == 0 and empty["losses"] == []
    with pytest.raises(ValueError, match=r"SFT example 1 \(task 'x'\): character 'é'"):
        train_sft(_model(), [examples[0], SFTExample("é=", "1", task_id="x")], cfg, seed=0)
