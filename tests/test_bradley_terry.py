"""The pair-wise (Bradley-Terry) reward model: its loss by hand, the pair builder on a hand-built
round, the offset fit, a real tiny model learning to rank, and the loop writing its calibration."""

from __future__ import annotations

import math
import random

import pytest
import torch

from reasonloop.config import ConfigError, ModelConfig, TrainConfig, load_config
from reasonloop.evaluator.bradley_terry import (
    BT_RM_FILE,
    PairwiseRewardModel,
    bt_loss,
    bt_pairs,
    fit_offset,
    train_bt,
)
from reasonloop.evaluator.calibration import auroc
from reasonloop.loop.run import run
from reasonloop.models.tiny import TinyModel
from reasonloop.types import Judgement, PreferencePair, Task, Trace

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64)


def test_bt_loss_by_hand() -> None:
    chosen = torch.tensor([1.0, 0.0, -2.0])
    rejected = torch.tensor([0.0, 0.0, 1.0])
    # -log sigmoid(d) = log(1 + e^-d) for d = 1, 0, -3
    want = (math.log(1 + math.e**-1) + math.log(2) + math.log(1 + math.e**3)) / 3
    assert float(bt_loss(chosen, rejected)) == pytest.approx(want, rel=1e-6)
    # a margin of 1 shifts every difference down by 1: d = 0, -1, -4
    want_m = (math.log(2) + math.log(1 + math.e) + math.log(1 + math.e**4)) / 3
    assert float(bt_loss(chosen, rejected, margin=1.0)) == pytest.approx(want_m, rel=1e-6)
    # a shared constant on both rewards changes nothing (why the head's bias is free)
    assert float(bt_loss(chosen + 5, rejected + 5)) == pytest.approx(want, rel=1e-6)
    c, r = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    bt_loss(c, r).backward()
    assert c.grad is not None and r.grad is not None
    assert all(g < 0 for g in c.grad) and all(g > 0 for g in r.grad)


def _task(i: int) -> Task:
    return Task(id=f"t{i}", family="addition", prompt=f"{i}+{i}=", answer=str(2 * i))


def _trace(tid: str, task: str, text: str, hint: bool = False) -> Trace:
    decoding = {"hint": True} if hint else {}
    return Trace(tid, task, text, [], text, producer="reasoner:r0", decoding=decoding, round=1)


def test_bt_pairs_on_a_hand_built_round() -> None:
    tasks = {t.id: t for t in (_task(1), _task(2), _task(3))}
    traces = [
        _trace("a", "t1", "2"),  # right
        _trace("b", "t1", "3"),  # wrong
        _trace("c", "t1", "2"),  # right, same text as a: one side holds a completion once
        _trace("d", "t2", "4"),  # t2: only right -> no pair
        _trace("e", "t3", "5"),  # t3: wrong, and a hinted right trace that must not pair
        _trace("f", "t3", "6", hint=True),
        _trace("g", "t9", "1"),  # a task not in the round
    ]
    verdicts = {"a": True, "b": False, "c": True, "d": True, "e": False, "f": True, "g": True}
    judgements = [
        Judgement(k, "gold", "outcome", [float(v)], verdict=v) for k, v in verdicts.items()
    ]
    pairs = bt_pairs(tasks, traces, judgements, 1, 4, random.Random(0))
    assert pairs == [PreferencePair("1+1=", "2", "3", "outcome", "t1", 1)]


def test_fit_offset_by_hand() -> None:
    # Rewards 0 and 0 with labels right and wrong: the best constant prediction is 0.5, c = 0.
    assert fit_offset([0.0, 0.0], [True, False]) == pytest.approx(0.0, abs=1e-9)
    # Rewards all r with 3 of 4 right: sigmoid(r - c) = 0.75, so c = r - log 3.
    assert fit_offset([2.0] * 4, [True, True, True, False]) == pytest.approx(2 - math.log(3))
    # One class only: clamped, reads 1e-3 at the mean reward.
    c = fit_offset([1.0, 3.0], [False, False])
    assert 1 / (1 + math.exp(-(2.0 - c))) == pytest.approx(1e-3)
    assert fit_offset([], []) == 0.0


def _toy_pairs(n: int, rng: random.Random) -> tuple[list[PreferencePair], list[tuple]]:
    """Addition-shaped tasks whose "right" completions end in an even digit: learnable only by
    reading the completion. Returns pairs, and (prompt, completion, label) of every completion."""
    pairs, flat = [], []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        prompt = f"{a}+{b}="
        good = f"{a % 10}+{b % 10};#{rng.randint(0, 99) * 2}"
        bad = f"{a % 10}+{b % 10};#{rng.randint(0, 99) * 2 + 1}"
        pairs.append(PreferencePair(prompt, good, bad, "outcome", f"t{i}", 1))
        flat += [(prompt, good, True), (prompt, bad, False)]
    return pairs, flat


def test_a_tiny_bt_model_learns_to_rank_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    train_pairs, train_flat = _toy_pairs(256, rng)
    _, test_flat = _toy_pairs(100, rng)
    policy = TinyModel.create(CFG, 0)
    rm = PairwiseRewardModel.from_policy(policy)
    tp, tc, ty = (list(x) for x in zip(*test_flat, strict=True))
    assert auroc(rm.score(tp, tc), ty) == 0.5  # a zero head: every reward 0
    cfg = TrainConfig(lr=3e-3, steps=100, warmup_steps=10, batch_size=32)
    calib = tuple(list(x) for x in zip(*train_flat, strict=True))
    info = train_bt(rm, train_pairs, cfg, seed=0, calibrate=calib)
    assert info["steps"] == 100 and info["n_pairs"] == 256
    assert sum(info["losses"][-10:]) / 10 < 0.5 * sum(info["losses"][:10]) / 10
    assert info["pair_accuracy"] > 0.9
    probs = rm.score(tp, tc)
    held_out = auroc(probs, ty)
    assert held_out is not None and held_out > 0.8, held_out
    # The fitted offset makes the scores probabilities: half the toy completions are right.
    assert 0.3 < sum(probs) / len(probs) < 0.7
    assert float(rm.head.bias.detach()[0]) == pytest.approx(-info["offset"])

    rm.save(tmp_path / BT_RM_FILE)
    back = PairwiseRewardModel.load(tmp_path / BT_RM_FILE, TinyModel.create(CFG, 1))
    assert back.score(tp, tc) == pytest.approx(probs, abs=1e-6)
    from reasonloop.evaluator.reward_model import OutcomeRewardModel

    with pytest.raises(ValueError, match="not a reward model"):
        OutcomeRewardModel.load(tmp_path / BT_RM_FILE, policy)


# --- in the loop -------------------------------------------------------------------------------

LOOP = {
    "rounds": 1,
    "heldout_samples": 3,
    "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "threads": 1},
    "seed_train": {"steps": 120, "batch_size": 32},
    "train": {"steps": 6, "batch_size": 16},
    "tasks": {
        "seed_examples": 200,
        "seed_levels": [1, 2],
        "heldout_levels": [1, 2, 3],
        "heldout_per_level": 6,
    },
    "creator": {"per_round": 16},
    "reasoner": {"samples": 3, "batch_size": 32},
    "evaluator": {
        "reward_model": {"enabled": False},
        "pairwise_reward_model": {
            "enabled": True,
            "train": {"steps": 10, "batch_size": 8, "warmup_steps": 2},
        },
    },
}


def test_the_loop_trains_checkpoints_and_calibrates_the_bt_model(tmp_path) -> None:
    summary = run(load_config("verifier-bon", overrides=LOOP), tmp_path, show_progress=False)
    assert summary["complete"]
    assert not (tmp_path / "checkpoints" / "r000" / BT_RM_FILE).exists()
    assert (tmp_path / "checkpoints" / "r001" / BT_RM_FILE).is_file()
    m = summary["rounds"][1]
    cal = m["calibration"]["pairwise_rm"]
    assert "orm" not in m["calibration"]  # the ORM is off: only the BT model is measured
    assert cal["n"] == 3 * 6 * 3 and 0 <= cal["positives"] <= cal["n"]
    assert cal["ece"] is not None and 0.0 <= cal["ece"] <= 1.0
    assert cal["auroc"] is None or 0.0 <= cal["auroc"] <= 1.0
    assert 0.0 <= cal["bon@3"] <= m["heldout"]["pass@3"]
    info = m["pairwise_reward_model"]
    assert info["carried"] is False and info["n_pairs"] >= 0


def test_bt_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="pairwise_reward_model.enabled needs heldout_samples"):
        load_config(overrides={"evaluator": {"pairwise_reward_model": {"enabled": True}}})
    with pytest.raises(ConfigError, match="pairwise_reward_model.margin"):
        load_config(overrides={"evaluator": {"pairwise_reward_model": {"margin": -1}}})
