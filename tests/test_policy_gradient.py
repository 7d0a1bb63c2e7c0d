"""Policy-gradient rounds (GRPO, RLOO) on a real tiny model, and the loop's preference/RL records."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from reasonloop.algorithms.grpo import group_advantages, grpo_loss
from reasonloop.algorithms.logprobs import sequence_logps, token_logps
from reasonloop.algorithms.optim import adamw, clip_and_step, lr_at, set_lr
from reasonloop.algorithms.policy_gradient import Group, groups_from_round, train_policy_gradient
from reasonloop.algorithms.sft import encode_example
from reasonloop.config import ModelConfig, RLConfig, TrainConfig, load_config
from reasonloop.loop.run import run
from reasonloop.models.tiny import TinyModel
from reasonloop.types import Judgement, SFTExample, Task, Trace

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64)


def _groups() -> list[Group]:
    """Each prompt's rewarded completion is the digit sum; three distractors get 0."""
    out = []
    for a in range(6):
        for b in range(3):
            right = str(a + b)
            wrong = [str(a + b + d) for d in (1, 2, 3)]
            out.append(Group(f"t{a}{b}", f"{a}+{b}=", [right, *wrong], [1.0, 0.0, 0.0, 0.0]))
    out.append(Group("flat", "9+9=", ["18", "19"], [1.0, 1.0]))  # no signal: dropped
    return out


def _logp(model: TinyModel, groups: list[Group]) -> torch.Tensor:
    seqs = [
        encode_example(model.tokenizer, SFTExample(g.prompt, c))
        for g in groups
        for c in g.completions
    ]
    with torch.no_grad():
        return sequence_logps(model, seqs)[0].view(len(groups), -1)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rewarded_completions_gain_probability(algorithm):
    model = TinyModel.create(CFG, 0)
    groups = _groups()
    before = _logp(model, groups[:-1])
    cfg = TrainConfig(steps=30, batch_size=24, lr=3e-3, warmup_steps=2)
    stats = train_policy_gradient(model, groups, cfg, RLConfig(), seed=0, algorithm=algorithm)
    after = _logp(model, groups[:-1])
    assert stats["groups"] == 19 and stats["groups_kept"] == 18
    assert stats["reward_mean"] == pytest.approx((18 + 2) / 74)
    gain = after - before
    assert (gain[:, 0] > 0).float().mean() >= 0.9 and (gain[:, 1:] < 0).float().mean() >= 0.8
    # the rewarded completion becomes the most likely of its group
    best_before = (before.argmax(1) == 0).float().mean()
    assert (after.argmax(1) == 0).float().mean() >= max(0.9, best_before + 0.3)
    assert 0 <= min(stats["clip_fraction"]) and max(stats["clip_fraction"]) <= 1


def test_the_samplers_own_log_probs_stand_in_for_the_old_policy_pass():
    """`Completion.token_logprobs` as `behaviour` spares the old-policy forward pass and trains
    the same weights (the two agree to float rounding); a row of the wrong length is refused."""
    from reasonloop.models.base import Sampling

    model = TinyModel.create(CFG, 3)
    prompts = [f"{a}+{b}=" for a in range(6) for b in range(3)]
    comps = model.generate(prompts, 4, Sampling(temperature=1.0, max_new_tokens=6, seed=1))
    groups, behaviour = [], []
    for i, (p, cs) in enumerate(zip(prompts, comps, strict=True)):
        rewards = [float(k == i % 4) for k in range(4)]  # some signal in every group
        groups.append(Group(f"t{i}", p, [c.text for c in cs], rewards))
        behaviour.append(
            [None if c.token_logprobs is None else torch.tensor(c.token_logprobs) for c in cs]
        )
    assert any(b is not None for row in behaviour for b in row)
    cfg = TrainConfig(steps=6, batch_size=16, lr=3e-3, warmup_steps=1)
    rl = RLConfig(dynamic_sampling=False)
    a, b = model.copy(), model.copy()
    sa = train_policy_gradient(a, groups, cfg, rl, seed=0)
    sb = train_policy_gradient(b, groups, cfg, rl, seed=0, behaviour=behaviour)
    assert sa["losses"] == pytest.approx(sb["losses"], rel=1e-4, abs=1e-5)
    for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5)
    moved = max(
        (pa - p0).abs().max().item()
        for pa, p0 in zip(a.module.parameters(), model.module.parameters(), strict=True)
    )
    assert moved > 1e-3  # trained, so the agreement above says something
    short = [[torch.zeros(1) for _ in row] for row in behaviour]
    with pytest.raises(ValueError, match="behaviour log-probs of completion 0 have 1 values"):
        train_policy_gradient(model.copy(), groups, cfg, rl, seed=0, behaviour=short)


OLD_LOGP = -1.5
"""The rollout policy's log-prob of every token in the skip test: ratios away from 1, so the
loss and clip fraction depend on the means' denominators (AdamW's step alone would not)."""


def _full_step(model, opt, groups, cfg, rl) -> tuple[float, float]:
    """One step on every completion run through the network, as TRL does: the reference for
    `train_policy_gradient`, which skips the zero-advantage ones."""
    seqs = [
        encode_example(model.tokenizer, SFTExample(g.prompt, c))
        for g in groups
        for c in g.completions
    ]
    adv = torch.cat(
        [group_advantages(torch.tensor([g.rewards], dtype=torch.float64))[0] for g in groups]
    ).float()
    model.module.train()
    logps, mask = token_logps(model, seqs)
    loss, s = grpo_loss(
        logps,
        adv,
        mask,
        old_logps=torch.full_like(logps, OLD_LOGP),
        aggregation=rl.aggregation,
        max_tokens=16,
    )
    loss.backward()
    set_lr(opt, lr_at(0, 1, cfg))
    clip_and_step(opt, cfg)
    return loss.item(), s["clip_fraction"]


@pytest.mark.parametrize("aggregation", ["token", "sequence", "fixed"])
@pytest.mark.parametrize("share_prompts", [False, True])
def test_zero_advantage_completions_are_skipped_and_the_step_is_the_same(
    aggregation, share_prompts
):
    """Groups whose rewards are all equal (kept: no dynamic sampling) never run through the
    network, yet the weights, loss and AdamW state follow the step that runs every completion,
    also on a step where every completion has zero advantage (the moments still move it)."""
    model = TinyModel.create(CFG, 0)
    live = [g for g in _groups()[:-1] if g.prompt[0] in "024"]  # 6 groups with signal
    flat = [
        Group(f"f{i}", f"{i}+9=", [str(i + 9), str(i + 8)], [float(i % 2)] * 2) for i in range(5)
    ]
    mixed = [g for pair in zip(live, flat, strict=False) for g in pair] + live[5:]
    cfg = TrainConfig(steps=1, batch_size=100, lr=3e-3, warmup_steps=1, grad_clip=1e9)
    rl = RLConfig(dynamic_sampling=False, aggregation=aggregation, share_prompts=share_prompts)
    a, b = model.copy(), model.copy()
    opt_a, opt_b = adamw(a.module, cfg), adamw(b.module, cfg)
    for groups in (mixed, flat):
        before = [p.detach().clone() for p in b.module.parameters()]
        behaviour = [[torch.full((len(c) + 1,), OLD_LOGP) for c in g.completions] for g in groups]
        stats = train_policy_gradient(
            a, groups, cfg, rl, seed=0, max_new_tokens=16, optimizer=opt_a, behaviour=behaviour
        )
        loss, clipped = _full_step(b, opt_b, groups, cfg, rl)
        assert stats["rows_skipped"] == 2 * sum(g in flat for g in groups)
        assert stats["losses"][0] == pytest.approx(loss, abs=1e-6)
        assert stats["clip_fraction"][0] == pytest.approx(clipped, abs=1e-6)
        assert groups is flat or (abs(loss) > 0.01 and clipped > 0.01)
        for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
            assert torch.allclose(pa, pb, atol=1e-5)  # float rounding, amplified by AdamW
        assert (
            max(
                (pb - p0).abs().max().item()
                for pb, p0 in zip(b.module.parameters(), before, strict=True)
            )
            > 1e-4
        )


def test_kl_to_a_reference_is_logged_and_required():
    model = TinyModel.create(CFG, 0)
    cfg = TrainConfig(steps=8, batch_size=24, lr=3e-3, warmup_steps=1)
    with pytest.raises(ValueError, match="reference"):
        train_policy_gradient(model, _groups(), cfg, RLConfig(kl_beta=0.1), seed=0)
    stats = train_policy_gradient(
        model, _groups(), cfg, RLConfig(kl_beta=0.1), seed=0, reference=model.copy()
    )
    assert stats["kl"][0] == pytest.approx(0.0, abs=1e-6) and stats["kl"][-1] > 0


def test_groups_from_round_use_outcome_scores_and_skip_hints():
    tasks = {"a": Task(id="a", family="f", prompt="1+1=", answer="2", difficulty=1)}
    traces = [
        Trace(id=f"x{i}", task_id="a", text=t, steps=[], answer=t, producer="r")
        for i, t in enumerate(["2", "3"])
    ] + [
        Trace(
            id="h",
            task_id="a",
            text="2",
            steps=[],
            answer="2",
            producer="r",
            decoding={"hint": True},
        )
    ]
    judg = [
        Judgement(trace_id="x0", evaluator="gold", level="outcome", scores=[1.0], verdict=True),
        Judgement(trace_id="x1", evaluator="gold", level="outcome", scores=[0.0], verdict=False),
    ]
    (g,) = groups_from_round(tasks, traces, judg)
    assert g.completions == ["2", "3"] and g.rewards == [1.0, 0.0]


def _tiny_run(preset: str, tmp_path, **extra) -> tuple:
    cfg = load_config(
        preset,
        overrides={
            "rounds": 1,
            "model": {"dim": 48, "n_layers": 2, "n_heads": 2, "threads": 1},
            "seed_train": {"steps": 300, "batch_size": 32, "lr": 0.003},
            "train": {"steps": 5, "batch_size": 16},
            "tasks": {
                "seed_levels": [1, 2],
                "seed_examples": 600,
                "heldout_levels": [1, 2],
                "heldout_per_level": 10,
            },
            "creator": {"per_round": 40, "start_level": 1, "levels_ahead": 2},
            "reasoner": {"samples": 4, "batch_size": 64},
            **extra,
        },
    )
    out = tmp_path / preset
    summary = run(cfg, out, show_progress=False, log=lambda *_: None)
    return out, summary


def test_iterative_dpo_round_pairs_right_with_wrong(tmp_path):
    out, summary = _tiny_run("iterative-dpo", tmp_path)
    r1 = out / "rounds/r001"
    pairs = pq.read_table(r1 / "pairs.parquet").to_pylist()
    traces = pq.read_table(r1 / "traces.parquet").to_pylist()
    verdict = {
        j["trace_id"]: j["verdict"] for j in pq.read_table(r1 / "judgements.parquet").to_pylist()
    }
    tasks = {t["id"]: t for t in pq.read_table(r1 / "tasks.parquet").to_pylist()}
    texts = {}
    for t in traces:
        texts.setdefault((t["task_id"], t["text"]), set()).add(verdict[t["id"]])
    assert pairs, "a 300-step seed leaves tasks with both right and wrong samples"
    for p in pairs:
        assert p["prompt"] == tasks[p["task_id"]]["prompt"]
        assert texts[(p["task_id"], p["chosen"])] == {True}
        assert texts[(p["task_id"], p["rejected"])] == {False}
    train = summary["rounds"][1]["train"]
    assert (
        train["examples"] == len(pairs) and "margins_last" in train and "accuracies_last" in train
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["rounds"]["1"]["phases"]["train"]["margins"]) == 5


def test_grpo_round_logs_reward_and_kl(tmp_path):
    out, summary = _tiny_run(
        "grpo-zero", tmp_path, strategy={"algorithm": "grpo", "rl": {"kl_beta": 0.05}}
    )
    train = summary["rounds"][1]["train"]
    traces = pq.read_table(out / "rounds/r001/traces.parquet").to_pylist()
    assert train["examples"] == len(traces) == 40 * 4
    assert 0 < train["reward_mean"] < 1 and 0 < train["groups_kept"] <= 40
    assert train["kl_last"] >= 0 and "clip_fraction_last" in train
    assert pq.read_table(out / "rounds/r001/pairs.parquet").num_rows == 0
    # The same command again finds the run finished and recomputes nothing.
    _, again = _tiny_run(
        "grpo-zero", tmp_path, strategy={"algorithm": "grpo", "rl": {"kl_beta": 0.05}}
    )
    assert again["rounds"] == summary["rounds"]


def test_summary_flags_reward_up_with_heldout_down():
    from reasonloop.report.summary import reward_hacking

    def rnd(i: int, acc: float, **train) -> dict:
        return {"round": i, "heldout": {"pass@1": acc}, "train": train}

    rounds = [
        rnd(0, 0.50),
        rnd(1, 0.55, reward_mean=0.4),
        rnd(2, 0.45, reward_mean=0.6),  # reward up, accuracy down 10 points: flagged
        rnd(3, 0.44, reward_mean=0.7),  # down only 1 point: within noise
        rnd(4, 0.30, reward_mean=0.5),  # both down: not hacking, just worse
    ]
    flags = reward_hacking(rounds)
    assert [(f["round"], f["reward"]) for f in flags] == [(2, "reward_mean")]
    assert flags[0]["from"] == 0.4 and flags[0]["heldout_to"] == 0.45
