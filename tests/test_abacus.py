"""Abacus digit-position embeddings of the tiny model: indices, sampler parity, training offsets,
checkpoints, and the clear errors where they cannot apply."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ModelConfig, TrainConfig
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel, digit_runs
from reasonloop.models.tokenizer import BOS_ID, PAD_ID, CharTokenizer
from reasonloop.types import SFTExample

PROMPTS = ["12+345=", "9+1=", "98765+43210=", "no digits"]


def _model(**cfg) -> TinyModel:
    full = {"dim": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64, "rope_theta": math.inf}
    model = TinyModel.create(ModelConfig(**{**full, "abacus": 16, **cfg}), 0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        model.module.abacus.weight[0].zero_()
    return model.__class__(model.config, model.module.eval())


def test_digit_runs_count_within_each_number():
    tok = CharTokenizer()
    ids = torch.tensor([[PAD_ID, BOS_ID, *tok.encode("12+345=6x78")]])
    assert digit_runs(ids).tolist() == [[0, 0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 1, 2]]


def test_an_anchor_opens_a_run_and_the_digits_after_it_go_on():
    tok = CharTokenizer()
    (eq,) = tok.encode("=")
    ids = torch.tensor([[PAD_ID, BOS_ID, *tok.encode("12+345=6x78==9")]])
    assert digit_runs(ids, eq).tolist() == [[0, 0, 1, 2, 0, 1, 2, 3, 1, 2, 0, 1, 2, 1, 1, 2]]
    # Reversed addition: answer digit j is predicted at index j + 1, its operand digits' index.
    runs = digit_runs(torch.tensor([tok.encode("141+563=6050")]), eq)[0].tolist()
    assert runs[:3] == [1, 2, 3] and runs[4:7] == [1, 2, 3] and runs[7:11] == [1, 2, 3, 4]


def test_the_embedding_changes_the_logits_and_only_at_digits():
    model = _model()
    ids = torch.tensor([[BOS_ID, *CharTokenizer().encode("ab12")]])
    with_abacus = model.forward(ids)
    model.module.abacus.weight.data.zero_()
    without = model.forward(ids)
    torch.testing.assert_close(with_abacus[:, :3], without[:, :3])  # bos, a, b: no digit yet
    assert (with_abacus[:, 3:] - without[:, 3:]).abs().max() > 1e-3


@pytest.mark.parametrize("anchor", ["", "="])
def test_sampler_with_cache_agrees_with_full_forward(anchor):
    """Greedy text and sampled log-probs from the KV-cache sampler (which carries the digit-run
    index token by token, the anchor included) equal a full forward over the finished
    sequence."""
    model = _model(abacus_anchor=anchor)
    greedy = Sampling(temperature=0, max_new_tokens=10, stop_at_newline=False)
    for prompt, (c,) in zip(PROMPTS, model.generate(PROMPTS, 1, greedy), strict=True):
        (alone,) = model.generate([prompt], 1, greedy)[0]
        assert c.text == alone.text
        ids = [BOS_ID, *model.tokenizer.encode(prompt + c.text)]
        logits = model.forward(torch.tensor([ids]))[0, len(prompt) : len(ids) - 1]
        logits[:, :2] = -math.inf
        logits[:, 99:] = -math.inf
        assert model.tokenizer.decode(logits.argmax(-1).tolist()) == c.text
    s = Sampling(temperature=1.0, max_new_tokens=8, stop_at_newline=False, seed=3)
    rows = [
        (p, c) for p, cs in zip(PROMPTS, model.generate(PROMPTS, 4, s), strict=True) for c in cs
    ]
    full = [(p, c) for p, c in rows if c.n_tokens == len(c.text)]
    assert len(full) >= 8 and any(ch.isdigit() for _, c in full for ch in c.text)
    scores = model.logprobs([p for p, _ in full], [c.text for _, c in full])
    assert [c.logprob for _, c in full] == pytest.approx([float(x.sum()) for x in scores], abs=1e-4)


def test_training_offsets_are_seeded_and_train_long_indices():
    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=1, weight_decay=0.0)
    data = [SFTExample(f"{a}+{b}=", str(a + b)) for a in range(10, 30) for b in range(3)]
    weights = []
    for _ in range(2):
        model = TinyModel.create(
            ModelConfig(dim=32, n_layers=1, n_heads=4, max_seq_len=64, abacus=16, abacus_offset=8),
            0,
        )
        before = model.module.abacus.weight.detach().clone()
        train_sft(model, data, cfg, seed=5)
        weights.append(model.module.abacus.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    moved = (weights[0] - before).abs().sum(-1) > 0
    assert moved[0].item() is False  # non-digits have no abacus embedding
    # numbers have at most 2 digits, yet indices up to 2 + 8 are trained by the offsets
    assert moved[1:11].all() and not moved[11:].any()


def test_checkpoint_round_trip_and_no_export(tmp_path):
    model = _model()
    model.save(tmp_path / "ck")
    back = TinyModel.load(tmp_path / "ck")
    ids = torch.tensor([[BOS_ID, *CharTokenizer().encode("123+45=")]])
    torch.testing.assert_close(back.forward(ids), model.forward(ids))
    with pytest.raises(ValueError, match="abacus"):
        model.export_hf(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="abacus_offset"):
        ModelConfig(abacus=8, abacus_offset=8)
    with pytest.raises(ValidationError, match="tiny-backend"):
        ModelConfig(backend="hf", abacus=8)
    with pytest.raises(ValidationError, match="abacus_anchor .* needs abacus > 0"):
        ModelConfig(abacus_anchor="=")
    with pytest.raises(ValidationError, match="one non-digit character"):
        ModelConfig(abacus=8, abacus_anchor="7")
    with pytest.raises(ValidationError, match="not in the tiny tokenizer"):
        ModelConfig(abacus=8, abacus_anchor="\u00e9")


def test_fixed_abacus_is_orthonormal_untrained_and_survives_a_checkpoint(tmp_path):
    """`abacus_fixed: s`: rows 1..N are orthogonal of norm s (row 0, non-digits, zero),
    training moves the rest of the model but not them, and a saved model loads them back still
    fixed."""
    cfg = ModelConfig(
        dim=32, n_layers=1, n_heads=4, max_seq_len=64, abacus=16, abacus_offset=8, abacus_fixed=0.5
    )
    model = TinyModel.create(cfg, 0)
    rows = model.module.abacus.weight.detach().clone()
    assert rows[0].abs().max() == 0
    torch.testing.assert_close(rows[1:] @ rows[1:].T, 0.25 * torch.eye(16), atol=1e-5, rtol=0)
    head = model.module.lm_head.weight.detach().clone()
    data = [SFTExample(f"{a}+{b}=", str(a + b)) for a in range(10, 30) for b in range(3)]
    train_sft(model, data, TrainConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=1), seed=5)
    assert torch.equal(model.module.abacus.weight, rows)
    assert not torch.equal(model.module.lm_head.weight, head)
    model.save(tmp_path / "ck")
    back = TinyModel.load(tmp_path / "ck")
    assert torch.equal(back.module.abacus.weight, rows)
    assert not back.module.abacus.weight.requires_grad
    with pytest.raises(ValidationError, match="abacus_fixed needs"):
        ModelConfig(dim=32, abacus=32, abacus_fixed=1.0)
