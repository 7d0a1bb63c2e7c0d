"""PRIME's implicit reward: token rewards, the outcome BCE and step sums by hand; a real tiny
pi_phi trained for a few seconds ranks right above wrong on held-out pairs, and its copies
leave the policy alone."""

from __future__ import annotations

import math
import random

import pytest
import torch

from reasonloop.config import ModelConfig, TrainConfig
from reasonloop.evaluator.calibration import auroc, ece
from reasonloop.evaluator.implicit_reward import (
    ImplicitRewardModel,
    implicit_reward_loss,
    step_rewards,
    token_rewards,
    train_implicit_reward,
)
from reasonloop.models.tiny import TinyModel

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64)

LOGPS = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -0.5, -3.0]])
REF = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -1.0, -1.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 0]])  # the third position is padding: ignored


def test_token_rewards_by_hand() -> None:
    r = token_rewards(LOGPS, REF, MASK, beta=0.5)
    assert r.tolist() == [[0.25, -0.5, 0.0], [0.25, 0.25, 0.0]]


def test_implicit_reward_loss_by_hand() -> None:
    labels = torch.tensor([1.0, 0.0])
    # logits: sum of row 0 = -0.25 (label 1), row 1 = 0.5 (label 0)
    want = (math.log(1 + math.exp(0.25)) + math.log(1 + math.exp(0.5))) / 2
    assert float(implicit_reward_loss(LOGPS, REF, MASK, labels, 0.5)) == pytest.approx(want)
    weighted = (3 * math.log(1 + math.exp(0.25)) + math.log(1 + math.exp(0.5))) / 2
    got = float(implicit_reward_loss(LOGPS, REF, MASK, labels, 0.5, pos_weight=3.0))
    assert got == pytest.approx(weighted)
    # the gradient raises log pi_phi on the right completion and lowers it on the wrong one
    x = LOGPS.clone().requires_grad_()
    implicit_reward_loss(x, REF, MASK, labels, 0.5).backward()
    assert x.grad is not None
    assert (x.grad[0, :2] < 0).all() and (x.grad[1, :2] > 0).all() and (x.grad[:, 2] == 0).all()


def test_step_rewards_sum_each_steps_tokens() -> None:
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert step_rewards(r, [1, 3]) == [3.0, 7.0]  # tokens 0..1, 2..3; 4..5 are the answer
    assert step_rewards(r, []) == []


def _toy(n: int, rng: random.Random) -> tuple[list[str], list[str], list[bool]]:
    """Chain-sum-shaped pairs, right when the step's total is right: a wrong step is the only
    thing that tells a wrong completion from a right one."""
    prompts, comps, labels = [], [], []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        ok = rng.random() < 0.5
        c = a + b if ok else a + b + rng.choice([-2, -1, 1, 2])
        prompts.append(f"{a}+{b}=")
        comps.append(f"{a}+{b}={c}#{c}")
        labels.append(ok)
    return prompts, comps, labels


def test_trained_implicit_reward_ranks_right_above_wrong() -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    train_p, train_c, train_y = _toy(400, rng)
    test_p, test_c, test_y = _toy(200, rng)
    policy = TinyModel.create(CFG, 0)
    before = {k: v.clone() for k, v in policy.module.state_dict().items()}
    irm = ImplicitRewardModel.from_policy(policy, beta=0.5)
    # pi_phi == pi_ref: every token reward is exactly 0, P(right) 0.5
    assert irm.score(test_p[:3], test_c[:3]) == [0.5, 0.5, 0.5]
    cfg = TrainConfig(lr=3e-3, steps=120, warmup_steps=10, batch_size=32)
    info = train_implicit_reward(irm, train_p, train_c, train_y, cfg, seed=0)
    assert info["steps"] == 120 and info["n"] == 400 and 0 < info["n_pos"] < 400
    assert sum(info["losses"][-20:]) / 20 < sum(info["losses"][:10]) / 10
    probs = irm.score(test_p, test_c)
    held_out = auroc(probs, test_y)
    assert held_out is not None and held_out > 0.65, held_out  # 0.75 measured; chance 0.5
    assert ece(probs, test_y) is not None
    # the token rewards are the process rewards: the sum over a step, then the answer's
    rows = irm.token_rewards(test_p[:2], test_c[:2])
    steps = irm.step_rewards(test_p[:2], test_c[:2])
    for row, s, c in zip(rows, steps, test_c[:2], strict=True):
        assert len(row) == len(c) + 1 and len(s) == 1
        assert s[0] == pytest.approx(float(row[: c.index("#") + 1].sum()), abs=1e-6)
    for k, v in policy.module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_labels_must_be_probabilities() -> None:
    irm = ImplicitRewardModel.from_policy(TinyModel.create(CFG, 0), beta=0.1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        train_implicit_reward(irm, ["1+1="], ["2"], [2.0], TrainConfig(steps=1), 0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        ImplicitRewardModel.from_policy(TinyModel.create(CFG, 0), beta=0.0)
