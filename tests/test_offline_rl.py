"""Offline RL on stored rounds and model-based RL, on one real short GRPO run whose round 2 is
rewarded by round 1's frozen ORM and also trains on round 1's stored groups: the rewards are the
ORM's, no gold label reaches round 2's training, the ORM does not move, the summary's
reward-hacking check reads the ORM reward; and `train_offline` trains a model from the stored
rounds alone."""

from __future__ import annotations

import copy

import pytest
import torch

from reasonloop.algorithms.logprobs import frozen_token_logps
from reasonloop.algorithms.offline_rl import stored_groups, train_offline
from reasonloop.algorithms.policy_gradient import groups_from_round
from reasonloop.algorithms.sft import encode_example
from reasonloop.config import RLConfig, TrainConfig, load_config
from reasonloop.evaluator.reward_model import ORM_FILE, OutcomeRewardModel
from reasonloop.loop.run import run
from reasonloop.loop.store import RunDir, read_records
from reasonloop.models import load_model
from reasonloop.report.summary import reward_hacking
from reasonloop.types import Judgement, SFTExample, Task, Trace

OVERRIDES = {
    "rounds": 2,
    "model": {"dim": 48, "n_layers": 2, "n_heads": 2, "threads": 1},
    "seed_train": {"steps": 300, "batch_size": 32, "lr": 0.003},
    "train": {"steps": 4, "batch_size": 16},
    "tasks": {
        "seed_levels": [1, 2],
        "seed_examples": 600,
        "heldout_levels": [1, 2],
        "heldout_per_level": 8,
    },
    "creator": {"per_round": 24, "start_level": 1, "levels_ahead": 2},
    "reasoner": {"samples": 4, "batch_size": 64},
    "heldout_samples": 2,
    "evaluator": {"reward_model": {"enabled": True, "train": {"steps": 6, "batch_size": 16}}},
    "strategy": {"algorithm": "grpo", "offline_rounds": 1, "rl": {"reward": "orm"}},
}


@pytest.fixture(scope="module")
def model_based(tmp_path_factory):
    cfg = load_config("grpo-zero", overrides=copy.deepcopy(OVERRIDES))
    out = tmp_path_factory.mktemp("model-based") / "run"
    summary = run(cfg, out, show_progress=False, log=lambda *_: None)
    return cfg, out, summary


def _groups(out, q: int):
    d = RunDir(out).round_dir(q)
    tasks = {t.id: t for t in read_records(d / "tasks.parquet", Task)}
    traces = read_records(d / "traces.parquet", Trace)
    return groups_from_round(tasks, traces, read_records(d / "judgements.parquet", Judgement))


def test_model_based_round_is_rewarded_by_the_frozen_orm(model_based) -> None:
    cfg, out, summary = model_based
    r1, r2 = summary["rounds"][1], summary["rounds"][2]
    assert r1["train"]["rl_inputs"]["reward"] == "verifier"
    assert r2["train"]["rl_inputs"]["reward"] == "orm"
    # honest bookkeeping: the verifier's labels trained round 1 (and its ORM), not round 2
    assert [r["gold_labels_in_training"] for r in summary["rounds"]] == [True, True, False]
    # round 2 trains on its own groups and round 1's stored ones
    own, stored = _groups(out, 2), _groups(out, 1)
    assert r2["train"]["rl_inputs"]["offline_rounds"] == [1]
    assert r2["train"]["rl_inputs"]["offline_groups"] == len(stored)
    assert r2["train"]["examples"] == sum(len(g.completions) for g in own + stored)
    # its reward is round 1's ORM on those samples; the verifier's view is kept beside it
    ckpt = RunDir(out).checkpoint
    orm = OutcomeRewardModel.load(ckpt(1) / ORM_FILE, load_model(cfg.model, ckpt(1)))
    groups = own + stored
    scores = orm.score(
        [g.prompt for g in groups for _ in g.completions],
        [c for g in groups for c in g.completions],
    )
    assert r2["train"]["reward_mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
    gold = [x for g in groups for x in g.rewards]
    assert r2["train"]["rl_inputs"]["gold_reward_mean"] == pytest.approx(sum(gold) / len(gold))
    # the ORM is frozen after round 1: round 2's checkpoint carries the same weights
    again = OutcomeRewardModel.load(ckpt(2) / ORM_FILE, load_model(cfg.model, ckpt(2)))
    for a, b in zip(orm.module.parameters(), again.module.parameters(), strict=True):
        assert torch.equal(a, b)
    assert r2["reward_model"]["frozen"] is True
    # the ORM is still measured against gold on the held-out samples each round
    assert "pass@1" in r2["heldout"]


def test_reward_hacking_check_reads_the_orm_reward(model_based) -> None:
    _, _, summary = model_based
    rounds = copy.deepcopy(summary["rounds"])
    assert summary["reward_hacking"] == reward_hacking(rounds)
    # the ORM's reward rising while held-out accuracy falls is flagged, under its own name
    rounds[2]["train"]["reward_mean"] = rounds[1]["train"]["reward_mean"] + 0.2
    rounds[2]["heldout"]["pass@1"] = rounds[1]["heldout"]["pass@1"] - 0.1
    flagged = reward_hacking(rounds)
    assert [(f["round"], f["reward"]) for f in flagged] == [(2, "reward_mean")]


def test_offline_rl_trains_on_stored_rounds_only(model_based) -> None:
    cfg, out, _ = model_based
    rd = RunDir(out)
    groups, behaviour, tasks = stored_groups(rd, [1, 2], cfg.model)
    assert len(groups) == len(_groups(out, 1)) + len(_groups(out, 2))
    assert all(g.task_id in tasks for g in groups)
    # behaviour log-probs are those of the checkpoint that sampled each round (r - 1)
    g = groups[-1]
    sampler = load_model(cfg.model, rd.checkpoint(1))
    seqs = [
        encode_example(sampler.tokenizer, SFTExample(prompt=g.prompt, completion=c))
        for c in g.completions
    ]
    # Batched with other rows, the stored values saw other padding and summation orders: equal to
    # float rounding (measured up to 1.2e-5 relative), where another checkpoint is far off.
    for want, got in zip(frozen_token_logps(sampler, seqs), behaviour[-1], strict=True):
        assert torch.allclose(want, got, rtol=1e-4, atol=1e-6)
    later = frozen_token_logps(load_model(cfg.model, rd.checkpoint(2)), seqs)
    assert not all(
        torch.allclose(w, g, rtol=1e-4, atol=1e-6)
        for w, g in zip(later, behaviour[-1], strict=True)
    )
    model = load_model(cfg.model, rd.checkpoint(2))
    before = [p.detach().clone() for p in model.module.parameters()]
    tcfg = TrainConfig(lr=1e-3, steps=3, batch_size=16, warmup_steps=0)
    stats = train_offline(model, rd, [1, 2], cfg.model, tcfg, RLConfig(dynamic_sampling=False), 0)
    assert stats["steps"] == 3 and stats["rounds"] == [1, 2]
    assert stats["examples"] == sum(len(g.completions) for g in groups)
    assert all(torch.isfinite(torch.tensor(stats["losses"])))
    moved = sum(
        float((p.detach() - q).abs().sum())
        for p, q in zip(model.module.parameters(), before, strict=True)
    )
    assert moved > 0
    with pytest.raises(ValueError, match="round 0 has none"):
        stored_groups(rd, [0], cfg.model)
