"""GRPO / RLOO building blocks: hand-computed values and parity with TRL's GRPOTrainer."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from reasonloop.algorithms.grpo import (
    group_advantages,
    grpo_loss,
    k3_kl,
    overlong_penalty,
    rloo_advantages,
    varied_groups,
)


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = group_advantages(r)
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    assert adv[0].tolist() == pytest.approx(
        [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1 + [-0.5 / (std + 1e-4), 0.5 / (std + 1e-4)]
    )
    assert adv[1].abs().max().item() == 0.0
    assert group_advantages(r, scale=False)[0].tolist() == [0.5, -0.5, -0.5, 0.5]
    with pytest.raises(ValueError, match="samples>=2"):
        group_advantages(torch.ones(3))


def test_rloo_is_reward_minus_mean_of_the_others():
    r = torch.tensor([[3.0, 0.0, 1.0]])
    assert rloo_advantages(r)[0].tolist() == pytest.approx([3 - 0.5, 0 - 2.0, 1 - 1.5])
    # equals G/(G-1) times the centred reward
    assert torch.allclose(rloo_advantages(r), 1.5 * group_advantages(r, scale=False))


def test_dynamic_sampling_and_overlong_penalty():
    r = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    assert varied_groups(r).tolist() == [False, True, False]
    pen = overlong_penalty(torch.tensor([10, 16, 18, 20, 25]), max_tokens=20, cache=4)
    assert pen.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(torch.tensor([1]), 10, 0)


def test_grpo_loss_by_hand():
    logps = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.9]]))
    old = torch.log(torch.tensor([[0.25, 0.5], [0.4, 0.9]]))  # ratios 2, 1 | 0.5, 1
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss, stats = grpo_loss(logps, adv, mask, old_logps=old, eps_low=0.2, eps_high=0.2)
    # row 1: -min(2, 1.2) = -1.2 and -1 -> mean -1.1; row 2: -min(-0.5, -0.8) = 0.8 -> 0.8
    assert loss.item() == pytest.approx((-1.1 + 0.8) / 2, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    tok, _ = grpo_loss(logps, adv, mask, old_logps=old, aggregation="token")
    assert tok.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3, abs=1e-6)
    fixed, _ = grpo_loss(logps, adv, mask, old_logps=old, aggregation="fixed", max_tokens=4)
    assert fixed.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 8, abs=1e-6)


def test_k3_kl_is_nonnegative_and_zero_at_equality():
    a = torch.randn(50)
    b = torch.randn(50)
    assert (k3_kl(a, b) >= 0).all() and k3_kl(a, a).abs().max().item() == 0.0


def test_on_policy_gradient_is_advantage_weighted_logprob_gradient():
    """With old = current and no KL, the gradient is -A * dlogp (mean over tokens)."""
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = grpo_loss(logps, torch.tensor([2.0]), torch.ones(1, 2))
    loss.backward()
    assert logps.grad.tolist() == [[-1.0, -1.0]]


@pytest.mark.parametrize(
    "loss_type,aggregation", [("grpo", "sequence"), ("bnpo", "token"), ("dr_grpo", "fixed")]
)
def test_matches_trl_grpo_trainer(tmp_path, loss_type, aggregation):
    """TRL's GRPOTrainer loss and ours on identical inputs (clipped ratios and a k3 KL term)."""
    trl = pytest.importorskip("trl", reason="TRL not installed: GRPO parity with TRL not checked")
    from datasets import Dataset

    from reasonloop.config import ModelConfig
    from reasonloop.models.tiny import TinyModel
    from reasonloop.models.tokenizer import hf_tokenizer

    TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64), 0).export_hf(
        tmp_path / "m"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import transformers

        model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m")
        args = trl.GRPOConfig(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=4,
            num_generations=2,
            report_to=[],
            beta=0.04,
            use_cpu=True,
            loss_type=loss_type,
            max_completion_length=6,
            epsilon=0.2,
            bf16=False,
        )
        trainer = trl.GRPOTrainer(
            model=model,
            reward_funcs=lambda completions, **_: [0.0] * len(completions),
            args=args,
            train_dataset=Dataset.from_list([{"prompt": "1+2="}]),
            processing_class=hf_tokenizer(),
        )
    g = torch.Generator().manual_seed(0)
    B, P, T = 4, 5, 6
    prompt_ids = torch.randint(4, 60, (B, P), generator=g)
    completion_ids = torch.randint(4, 60, (B, T), generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]])
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    with torch.no_grad():
        ids = torch.cat([prompt_ids, completion_ids], 1)
        logits = trainer.model(input_ids=ids).logits[:, P - 1 : -1].float()
        logps = torch.log_softmax(logits, -1).gather(-1, completion_ids[..., None]).squeeze(-1)
    # old and reference log-probs near the policy's, so that some ratios clip and some do not
    old = logps + 0.4 * torch.randn(B, T, generator=g)
    ref = logps + 0.4 * torch.randn(B, T, generator=g)
    inputs = dict(
        prompt_ids=prompt_ids,
        prompt_mask=torch.ones(B, P, dtype=torch.long),
        completion_ids=completion_ids,
        completion_mask=mask,
        advantages=adv,
        old_per_token_logps=old,
        ref_per_token_logps=ref,
        num_items_in_batch=mask.sum(),
    )
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which we skip
    theirs = trainer._compute_loss(trainer.model, inputs)
    ours, stats = grpo_loss(
        logps, adv, mask, old, ref, beta=0.04, aggregation=aggregation, max_tokens=6
    )
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert 0 < stats["clip_fraction"] < 1 and stats["kl"] > 0
