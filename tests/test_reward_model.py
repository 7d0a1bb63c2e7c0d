"""The outcome reward model: its BCE loss by hand, a real tiny ORM learning a separable labelling,
save/load, and that the policy it was copied from stays untouched."""

from __future__ import annotations

import math
import random

import pytest
import torch

from reasonloop.config import ConfigError, ModelConfig, TrainConfig, load_config
from reasonloop.evaluator.calibration import auroc
from reasonloop.evaluator.reward_model import ORM_FILE, OutcomeRewardModel, orm_loss, train_orm
from reasonloop.loop.run import run
from reasonloop.models import load_model
from reasonloop.models.tiny import TinyModel

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64)


def test_orm_loss_by_hand() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1.0, 0.0, 0.0])
    want = (math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)) / 3
    assert float(orm_loss(logits, labels)) == pytest.approx(want, rel=1e-6)
    # positives weighted 3x: only the first term grows
    want_w = (3 * math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e**-1)) / 3
    assert float(orm_loss(logits, labels, pos_weight=3.0)) == pytest.approx(want_w, rel=1e-6)
    # it is a tensor with a gradient, pointing the right way
    x = logits.clone().requires_grad_()
    orm_loss(x, labels).backward()
    assert x.grad is not None and x.grad[0] < 0 and x.grad[1] > 0


def _toy(n: int, rng: random.Random) -> tuple[list[str], list[str], list[bool]]:
    """Addition-shaped pairs whose label is "the answer is even": separable, but only by reading
    the completion (the prompt says nothing about the label)."""
    prompts, comps, labels = [], [], []
    for _ in range(n):
        a, b, ans = rng.randint(0, 99), rng.randint(0, 99), rng.randint(0, 999)
        prompts.append(f"{a}+{b}=")
        comps.append(f"{a % 10}+{b % 10};#{ans}")
        labels.append(ans % 2 == 0)
    return prompts, comps, labels


def test_a_fresh_orm_is_neutral_and_leaves_the_policy_alone() -> None:
    policy = TinyModel.create(CFG, 0)
    before = {k: v.clone() for k, v in policy.module.state_dict().items()}
    orm = OutcomeRewardModel.from_policy(policy)
    probs = orm.score(["1+2=", "33+4="], ["3", "1;#37"])
    assert probs == [0.5, 0.5]
    p, c, y = _toy(32, random.Random(0))
    train_orm(orm, p, c, y, TrainConfig(lr=1e-3, steps=3, warmup_steps=0, batch_size=8), 0)
    for k, v in policy.module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_orm_learns_a_separable_labelling_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    train_p, train_c, train_y = _toy(512, rng)
    test_p, test_c, test_y = _toy(200, rng)
    orm = OutcomeRewardModel.from_policy(TinyModel.create(CFG, 0))
    assert auroc(orm.score(test_p, test_c), test_y) == 0.5  # all 0.5 before training
    cfg = TrainConfig(lr=3e-3, steps=150, warmup_steps=10, batch_size=32)
    info = train_orm(orm, train_p, train_c, train_y, cfg, seed=0)
    assert info["steps"] == 150 and len(info["losses"]) == 150
    assert info["n"] == 512 and 0 < info["n_pos"] < 512
    assert sum(info["losses"][-20:]) / 20 < 0.5 * sum(info["losses"][:10]) / 10
    probs = orm.score(test_p, test_c)
    held_out = auroc(probs, test_y)
    assert held_out is not None and held_out > 0.9, held_out
    assert all(0.0 <= q <= 1.0 for q in probs)

    orm.save(tmp_path / ORM_FILE)
    back = OutcomeRewardModel.load(tmp_path / ORM_FILE, TinyModel.create(CFG, 1))
    assert back.score(test_p, test_c) == pytest.approx(probs, abs=1e-6)


def test_load_refuses_other_files(tmp_path) -> None:
    from reasonloop.algorithms.value_head import Critic

    policy = TinyModel.create(CFG, 0)
    Critic.from_policy(policy).save(tmp_path / "critic.safetensors")
    with pytest.raises(ValueError, match="not a reward model"):
        OutcomeRewardModel.load(tmp_path / "critic.safetensors", policy)
    with pytest.raises(FileNotFoundError):
        OutcomeRewardModel.load(tmp_path / "missing.safetensors", policy)
    OutcomeRewardModel.from_policy(policy).save(tmp_path / ORM_FILE)
    other = TinyModel.create(ModelConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=64), 0)
    with pytest.raises(ValueError, match="does not fit"):
        OutcomeRewardModel.load(tmp_path / ORM_FILE, other)


# --- in the loop -------------------------------------------------------------------------------

LOOP = {
    "rounds": 2,
    "heldout_samples": 4,
    "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "threads": 1},
    "seed_train": {"steps": 150, "batch_size": 32},
    "train": {"steps": 8, "batch_size": 16},
    "tasks": {
        "seed_examples": 300,
        "seed_levels": [1, 2],
        "heldout_levels": [1, 2, 3],
        "heldout_per_level": 8,
    },
    "creator": {"per_round": 24},
    "reasoner": {"samples": 3, "batch_size": 32},
    "evaluator": {"reward_model": {"train": {"steps": 20, "batch_size": 16, "warmup_steps": 2}}},
}


def test_verifier_bon_preset_trains_checkpoints_and_measures_its_orm(tmp_path) -> None:
    summary = run(load_config("verifier-bon", overrides=LOOP), tmp_path, show_progress=False)
    assert summary["complete"]
    ckpts = tmp_path / "checkpoints"
    assert not (ckpts / "r000" / ORM_FILE).exists()  # the seed's traces are all gold: one class
    for r in (1, 2):
        assert (ckpts / f"r{r:03d}" / ORM_FILE).is_file()
    n_heldout = len(summary["rounds"][0]["heldout"]["by_level"]) * 8
    assert "calibration" not in summary["rounds"][0]
    for m in summary["rounds"][1:]:
        h = m["heldout"]
        for key in ("pass@1", "maj@4", "pass@4", "bon@4", "weighted_maj@4"):
            assert 0.0 <= h[key] <= 1.0, key
        # best-of-4 picks one of the 4 samples: never above pass@4
        assert h["bon@4"] <= h["pass@4"]
        orm = m["calibration"]["orm"]
        assert orm["n"] == n_heldout * 4 and 0 <= orm["positives"] <= orm["n"]
        assert orm["ece"] is not None and 0.0 <= orm["ece"] <= 1.0
        assert orm["auroc"] is None or 0.0 <= orm["auroc"] <= 1.0
        assert m["reward_model"]["n"] == 24 * 3 and m["reward_model"]["steps"] == 20
    assert [m["reward_model"]["carried"] for m in summary["rounds"][1:]] == [False, True]
    # the checkpointed ORM reads back around the round's policy, and it has learned (a fresh
    # head is exactly zero)
    orm = OutcomeRewardModel.load(
        ckpts / "r002" / ORM_FILE,
        load_model(load_config("verifier-bon", overrides=LOOP).model, ckpts / "r002"),
    )
    assert float(orm.head.weight.detach().abs().sum()) > 0
    assert all(0.0 < p < 1.0 for p in orm.score(["1+2="], ["3"]))


def test_reward_model_needs_heldout_samples() -> None:
    with pytest.raises(ConfigError, match="heldout_samples"):
        load_config("verifier-bon", overrides={"heldout_samples": 0})
    # off by default, and then nothing asks for samples
    assert not load_config("rft").evaluator.reward_model.enabled
