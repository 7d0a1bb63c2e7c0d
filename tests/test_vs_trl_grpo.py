"""What the GRPO-vs-TRL benchmark (benchmarks/vs_trl.py --grpo) relies on: weights trained as a
`LlamaForCausalLM` come back into the tiny model exactly, and `train_policy_gradient` can carry
one optimiser across the sample -> train steps of an on-policy run."""

from __future__ import annotations

import warnings

import pytest
import torch

from reasonloop.algorithms.optim import adamw
from reasonloop.algorithms.policy_gradient import Group, train_policy_gradient
from reasonloop.config import ModelConfig, RLConfig, TrainConfig
from reasonloop.models.export import hf_state_dict, load_hf_state_dict
from reasonloop.models.tiny import TinyModel

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=32)


def test_weights_changed_in_transformers_load_back_with_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    TinyModel.create(CFG, seed=0).export_hf(tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stand-in for training on the transformers side: every tensor moves
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    tiny = TinyModel.create(CFG, seed=1)
    load_hf_state_dict(tiny, hf.state_dict())
    ids = torch.randint(4, 60, (3, 12), generator=g)
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        got = tiny.forward(ids)
    assert torch.allclose(got, expected, atol=1e-4)
    # and the round trip through an export is exact
    again = TinyModel.create(CFG, seed=2)
    tiny.export_hf(tmp_path / "back")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back")
    load_hf_state_dict(again, back.state_dict())
    for a, b in zip(
        tiny.module.state_dict().values(), again.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_load_hf_state_dict_names_what_is_missing_or_misshaped():
    small = TinyModel.create(CFG, seed=0)
    state = hf_state_dict(small)
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"lacks \['model.layers.1.mlp.up_proj.weight'\]"):
        load_hf_state_dict(small, state)
    wide = TinyModel.create(CFG.model_copy(update={"dim": 64}), seed=0)
    with pytest.raises(ValueError, match="do not fit"):
        load_hf_state_dict(small, hf_state_dict(wide))


def test_a_passed_optimiser_keeps_its_moments_across_calls():
    """Two calls with one AdamW: its step count runs on, and the second update differs from
    the one a fresh optimiser (the default, one per round) makes on the same groups."""
    groups = [
        Group("a", "12+34=", ["64", "46", "64", "55"], [0.0, 1.0, 0.0, 0.0]),
        Group("b", "21+43=", ["46", "64", "46", "64"], [1.0, 0.0, 1.0, 0.0]),
    ]
    train = TrainConfig(lr=1e-3, steps=2, batch_size=4, warmup_steps=0, min_lr_ratio=1.0)
    rl = RLConfig(aggregation="token", dynamic_sampling=False)
    carried = TinyModel.create(CFG, seed=0)
    opt = adamw(carried.module, train)
    for seed in (1, 2):
        stats = train_policy_gradient(carried, groups, train, rl, seed=seed, optimizer=opt)
        assert stats["steps"] == 2
    steps = {int(s["step"]) for s in opt.state.values()}
    assert steps == {4}
    fresh = TinyModel.create(CFG, seed=0)
    train_policy_gradient(fresh, groups, train, rl, seed=1, optimizer=adamw(fresh.module, train))
    train_policy_gradient(fresh, groups, train, rl, seed=2)  # a new AdamW for the second call
    diff = [
        (a - b).abs().max().item()
        for a, b in zip(carried.module.parameters(), fresh.module.parameters(), strict=True)
    ]
    assert max(diff) > 1e-6
