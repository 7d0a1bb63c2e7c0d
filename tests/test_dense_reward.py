"""Dense rewards for policy gradient: returns-to-go, PRIME's leave-one-out baseline and the
per-step mapping by hand; a family's step checker as a real step verifier; a real tiny model
pushed by dense rewards alone (equal outcome rewards) under GRPO, RLOO and PPO; a short loop
run with dense implicit rewards, and the config errors."""

from __future__ import annotations

import pytest
import torch

from reasonloop.algorithms.dense_reward import (
    dense_advantages,
    leave_one_out_token_rewards,
    place_step_scores,
    returns_to_go,
    step_end_tokens,
)
from reasonloop.algorithms.logprobs import frozen_token_logps
from reasonloop.algorithms.policy_gradient import Group, train_policy_gradient, train_ppo
from reasonloop.algorithms.sft import encode_example
from reasonloop.algorithms.value_head import Critic
from reasonloop.config import (
    ConfigError,
    ModelConfig,
    PPOConfig,
    RLConfig,
    TrainConfig,
    load_config,
)
from reasonloop.loop.rl_inputs import dense_rewards
from reasonloop.loop.run import run
from reasonloop.models.tiny import TinyModel
from reasonloop.models.tokenizer import CharTokenizer
from reasonloop.types import SFTExample

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64)


def test_returns_to_go_by_hand() -> None:
    r = torch.tensor([[1.0, 0.0, 2.0, 9.0], [0.0, 3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # the 9 sits on padding: it must not leak into row 0
    assert returns_to_go(r, mask).tolist() == [[3, 2, 2, 0], [3, 3, 0, 0]]
    half = returns_to_go(r, mask, gamma=0.5)[0].tolist()
    assert half == pytest.approx([1 + 0.5 * (0 + 0.5 * 2), 0 + 0.5 * 2, 2, 0])


def test_leave_one_out_and_dense_advantages_by_hand() -> None:
    rows = [torch.tensor([1.0, 3.0]), torch.tensor([0.0]), torch.tensor([4.0, 4.0, 4.0])]
    # per-row means 2, 0, 4; row i loses the mean of the other rows' means
    got = [x.tolist() for x in leave_one_out_token_rewards(rows)]
    assert got == [[-1.0, 1.0], [-3.0], [3.0, 3.0, 3.0]]
    dense = [torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])]
    plain = dense_advantages([0.5, -0.5], dense, weight=2.0, leave_one_out=False)
    assert plain[0].tolist() == [2.5, 2.5]  # 0.5 + 2 * [1, 1]
    assert plain[1].tolist() == [1.5, -0.5, -0.5]  # -0.5 + 2 * [1, 0, 0]
    loo = dense_advantages([0.5, -0.5], dense, weight=1.0)
    # means 1/2 and 1/3: row 0 loses 1/3 per token, row 1 loses 1/2
    assert loo[0].tolist() == pytest.approx([0.5 + (-1 / 3 + 2 / 3), 0.5 + 2 / 3])
    assert loo[1].tolist() == pytest.approx([-0.5 + 0.5 - 1.0, -0.5 - 1.0, -0.5 - 0.5])


def test_step_ends_and_placement_by_hand() -> None:
    tok = CharTokenizer()
    assert step_end_tokens(tok, "6+6=12;12+0=13#13") == [6, 14]  # `6+6=12;` is 7 chars
    assert step_end_tokens(tok, "a;;b#c\n") == [1, 4]  # the empty segment is no step
    assert step_end_tokens(tok, "13") == []  # a bare answer has no step
    placed = place_step_scores(
        [[0.0, -1.0], [None], [-0.5, -0.5]], [[2, 5], [1], [1, 9]], [7, 3, 4]
    )
    assert placed[0].tolist() == [0, 0, 0, 0, 0, -1, 0]
    assert placed[1].tolist() == [0, 0, 0]
    assert placed[2].tolist() == [0, -0.5, 0, 0]  # the end past a truncated row is dropped


def test_step_check_is_a_real_step_verifier() -> None:
    cfg = load_config(
        "grpo-zero",
        overrides={
            "tasks": {"family": "chain_sum"},
            "strategy": {"rl": {"dense_reward": "step-check"}},
        },
    )
    from reasonloop.tasks.registry import get_family

    family = get_family("chain_sum")
    task = family.task("6+6+0=", "12", 2, {"terms": [6, 6, 0]})
    # what the family makes of that prompt is what we check against
    right, wrong = "6+6=12;12+0=12#12", "6+6=12;12+0=13#13"
    group = Group(task.id, task.prompt, [right, wrong], [1.0, 0.0])
    model = TinyModel.create(CFG, 0)
    dense, info = dense_rewards(cfg, None, 1, [group], {task.id: task}, model, 0)
    assert info == {"steps_checked": 4, "steps_wrong": 1, "mean": pytest.approx(-1 / 36)}
    assert dense[0][0].tolist() == [0.0] * 18
    assert dense[0][1].tolist() == [0.0] * 14 + [-1.0] + [0.0] * 3  # at the `#` closing step 2


def _gap(model: TinyModel, prompt: str, a: str, b: str) -> float:
    seqs = [
        encode_example(model.tokenizer, SFTExample(prompt=prompt, completion=c)) for c in (a, b)
    ]
    la, lb = frozen_token_logps(model, seqs)
    return float(la.sum() - lb.sum())


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "ppo"])
def test_dense_rewards_alone_move_a_real_model(algorithm: str) -> None:
    # Equal outcome rewards: no outcome advantage; only the dense penalty on "3" says anything.
    model = TinyModel.create(CFG, 0)
    group = Group("t", "1+1=", ["2", "3"], [1.0, 1.0])
    dense = [[torch.tensor([0.0, 0.0]), torch.tensor([-1.0, 0.0])]]
    before = _gap(model, "1+1=", "2", "3")
    cfg = TrainConfig(lr=3e-3, steps=6, batch_size=2, warmup_steps=0, weight_decay=0.0)
    if algorithm == "ppo":
        critic = Critic.from_policy(model)
        train_ppo(model, critic, [group], cfg, PPOConfig(), 0, dense=dense)
    else:
        rl = RLConfig(dynamic_sampling=False)
        train_policy_gradient(model, [group], cfg, rl, 0, algorithm, dense=dense)
    assert _gap(model, "1+1=", "2", "3") > before + 0.05
    # without the dense rewards the same update leaves the pair as it was (zero advantage)
    if algorithm != "ppo":
        still = TinyModel.create(CFG, 0)
        train_policy_gradient(still, [group], cfg, RLConfig(dynamic_sampling=False), 0, algorithm)
        assert _gap(still, "1+1=", "2", "3") == pytest.approx(before, abs=1e-4)


def test_dense_rows_must_cover_the_completion() -> None:
    model = TinyModel.create(CFG, 0)
    group = Group("t", "1+1=", ["2", "3"], [1.0, 0.0])
    with pytest.raises(ValueError, match="dense reward row has 1 values for 2"):
        train_policy_gradient(
            model,
            [group],
            TrainConfig(steps=1, batch_size=2),
            RLConfig(),
            0,
            dense=[[torch.zeros(1), torch.zeros(2)]],
        )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"strategy": {"algorithm": "star", "rl": {"dense_reward": "implicit"}}}, "dense_reward"),
        ({"strategy": {"rl": {"reward": "orm"}}}, "evaluator.reward_model.enabled"),
        ({"strategy": {"algorithm": "ppo", "rl": {"reward": "orm"}}}, "strategy.rl.reward"),
        ({"strategy": {"algorithm": "rft", "offline_rounds": 2}}, "strategy.offline_rounds"),
        ({"strategy": {"rl": {"dense_reward": "prm"}}}, "process_reward_model.enabled"),
        ({"strategy": {"rl": {"dense_reward": "dense"}}}, "dense_reward"),
        ({"strategy": {"rl": {"implicit_beta": 0}}}, "implicit_beta"),
    ],
)
def test_config_errors_name_the_field(overrides: dict, field: str) -> None:
    base = {"strategy": {"algorithm": "grpo"}}
    merged = base | overrides
    merged["strategy"] = base["strategy"] | overrides.get("strategy", {})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("grpo-zero", overrides=merged)
    # and the defaults change nothing: every preset loads with these off
    assert load_config("grpo-zero").strategy.rl.dense_reward == "none"


def test_loop_round_with_dense_implicit_rewards(tmp_path) -> None:
    cfg = load_config(
        "grpo-zero",
        overrides={
            "rounds": 1,
            "model": {"dim": 48, "n_layers": 2, "n_heads": 2, "threads": 1},
            "seed_train": {"steps": 300, "batch_size": 32, "lr": 0.003},
            "train": {"steps": 4, "batch_size": 16},
            "tasks": {
                "seed_levels": [1, 2],
                "seed_examples": 600,
                "heldout_levels": [1, 2],
                "heldout_per_level": 10,
            },
            "creator": {"per_round": 24, "start_level": 1, "levels_ahead": 2},
            "reasoner": {"samples": 4, "batch_size": 64},
            "strategy": {
                "rl": {"dense_reward": "implicit", "implicit_train": {"steps": 4, "batch_size": 16}}
            },
        },
    )
    summary = run(cfg, tmp_path / "run", show_progress=False, log=lambda *_: None)
    train = summary["rounds"][1]["train"]
    dense = train["rl_inputs"]["dense"]
    assert dense["steps"] == 4 and dense["n"] == train["examples"] == 24 * 4
    assert 0 < dense["n_pos"] < dense["n"] and dense["loss_first"] > 0
    assert train["steps"] == 4 and len(summary["rounds"]) == 2
    assert "pass@1" in summary["rounds"][1]["heldout"]
    assert summary["rounds"][1]["gold_labels_in_training"] is True
