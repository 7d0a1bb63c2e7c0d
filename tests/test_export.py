"""A tiny model exported for `transformers.LlamaForCausalLM` gives the same logits and tokens."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from reasonloop.config import ModelConfig
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.models.tokenizer import BOS_ID, EOS_ID, N_USED, PAD_ID

transformers = pytest.importorskip("transformers")


def _exported(tmp_path, theta: float, mute: bool = False) -> tuple[TinyModel, torch.nn.Module]:
    """A model with spread-out weights and its transformers twin. `mute` zeroes the output rows
    of ids our sampler never emits (pad, bos, unused), so HF's plain argmax never picks them."""
    model = TinyModel.create(
        ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64, rope_theta=theta), 0
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move every parameter, norm gains included, away from its init
        for p in model.module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
        if mute:
            model.module.lm_head.weight[[PAD_ID, BOS_ID, *range(N_USED, 128)]] = 0
    model.export_hf(tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    return model, hf


@pytest.mark.parametrize("theta", [10000.0, 20.0, math.inf])
def test_hf_logits_match(tmp_path, theta):
    model, hf = _exported(tmp_path, theta)
    ids = torch.randint(3, N_USED, (3, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.forward(ids), hf(ids).logits
        assert (ours - theirs).abs().max() < 1e-4
        # left padding, positions counted over the real tokens on both sides
        mask = torch.ones_like(ids)
        mask[0, :5] = 0
        ours, theirs = model.forward(ids, mask), hf(ids, attention_mask=mask).logits
        assert (ours[0, 5:] - theirs[0, 5:]).abs().max() < 1e-4
        assert (ours[1:] - theirs[1:]).abs().max() < 1e-4


def test_positions_matter_with_rope_and_not_with_nope(tmp_path):
    """NoPE must really be position-free in transformers too: with one layer the last logits
    ignore the order of the earlier tokens, which no rotary model does."""
    ids = torch.tensor([[BOS_ID, 10, 20, 30, 40, 50]])
    shuffled = torch.tensor([[BOS_ID, 30, 10, 40, 20, 50]])
    for theta, same in ((math.inf, True), (10000.0, False)):
        model = TinyModel.create(ModelConfig(dim=32, n_layers=1, n_heads=4, rope_theta=theta), 0)
        model.export_hf(tmp_path / str(theta))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / str(theta)).eval()
        with torch.no_grad():
            a, b = hf(ids).logits[0, -1], hf(shuffled).logits[0, -1]
        assert torch.allclose(a, b, atol=1e-5) == same


def test_hf_greedy_generate_matches(tmp_path):
    model, hf = _exported(tmp_path, 10000.0, mute=True)
    prompts = ["12+34=", "a longer prompt="]
    ours = model.generate(
        prompts, 1, Sampling(temperature=0, max_new_tokens=12, stop_at_newline=False)
    )
    for prompt, (c,) in zip(prompts, ours, strict=True):
        ids = torch.tensor([[BOS_ID, *model.tokenizer.encode(prompt)]])
        out = hf.generate(
            ids,
            max_new_tokens=c.n_tokens,
            do_sample=False,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
        )
        assert model.tokenizer.decode(out[0, ids.shape[1] :].tolist()) == c.text


def test_exported_tokenizer_matches_the_tiny_one(tmp_path):
    """The export carries the character tokenizer: AutoTokenizer gives the same ids and text."""
    from reasonloop.models.tokenizer import CharTokenizer

    TinyModel.create(ModelConfig(dim=32, n_layers=1, n_heads=4, max_seq_len=64), 0).export_hf(
        tmp_path / "hf"
    )
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = CharTokenizer()
    text = "058+123=1810\n step;2 #~ A-z"
    assert tok.encode(text, add_special_tokens=False) == ours.encode(text)
    assert tok.decode(ours.encode(text)) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert len(tok) == N_USED
