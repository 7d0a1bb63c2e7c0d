"""PPO: per-token rewards, GAE, the clipped value loss and whitening by hand; the critic; a real
tiny model trained with `train_ppo`; and `reasonloop run --preset ppo` end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from reasonloop.algorithms.grpo import k3_kl
from reasonloop.algorithms.logprobs import frozen_token_logps, token_logps
from reasonloop.algorithms.policy_gradient import Group, _ppo_targets, train_ppo
from reasonloop.algorithms.ppo import (
    explained_variance,
    gae,
    last_token,
    old_policy_kl,
    token_rewards,
    value_loss,
    whiten,
)
from reasonloop.algorithms.sft import encode_example
from reasonloop.algorithms.value_head import CRITIC_FILE, Critic, frozen_values
from reasonloop.config import ModelConfig, PPOConfig, TrainConfig, load_config
from reasonloop.loop.run import run
from reasonloop.models.tiny import TinyModel
from reasonloop.types import SFTExample

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64)


# --- the pure pieces, by hand ------------------------------------------------------------------


def _close(got: torch.Tensor, want: list) -> None:
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), atol=1e-6, rtol=1e-6)


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.5, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # reward-to-go of row 0: 1.5, 1.5, 1.0; of row 1: 2.0
    _close(adv, [[1.4, 1.3, 0.7, 0], [1.5, 0, 0, 0]])
    _close(ret, [[1.5, 1.5, 1.0, 0], [2.0, 0, 0, 0]])


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.6, 0.5]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    # delta_t = r_t + 0.9 V_{t+1} - V_t, and V after the last token is 0
    assert adv[0].tolist() == pytest.approx([0.9 * 0.6 - 0.2, 0.9 * 0.5 - 0.6, 1.0 - 0.5])
    assert ret[0].tolist() == pytest.approx([0.9 * 0.6, 0.9 * 0.5, 1.0])


def test_gae_general_case_by_hand():
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25]])
    adv, _ = gae(rewards, values, torch.ones(1, 2), gamma=0.5, lam=0.5)
    d1 = 1.0 - 0.25  # last token: r - V
    d0 = 0.0 + 0.5 * 0.25 - 0.5
    assert adv[0].tolist() == pytest.approx([d0 + 0.25 * d1, d1])


def test_masked_positions_contribute_nothing_and_the_span_may_start_anywhere():
    """A completion after a prompt (collate's layout) gives the same advantages as the same
    completion at position 0, whatever sits in the masked positions."""
    r = torch.tensor([[0.0, 0.3, 1.0]])
    v = torch.tensor([[0.4, 0.1, 0.7]])
    ref_adv, ref_ret = gae(r, v, torch.ones(1, 3), gamma=0.95, lam=0.9)
    junk = torch.tensor([[5.0, -3.0, 0.0, 0.0, 0.0, 7.0, 8.0]])
    r2, v2 = junk.clone(), -junk
    r2[0, 2:5], v2[0, 2:5] = r[0], v[0]
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0]])
    adv, ret = gae(r2, v2, mask, gamma=0.95, lam=0.9)
    assert adv[0, 2:5].tolist() == pytest.approx(ref_adv[0].tolist())
    assert ret[0, 2:5].tolist() == pytest.approx(ref_ret[0].tolist())
    assert adv[0, [0, 1, 5, 6]].abs().sum() == 0 and ret[0, [0, 1, 5, 6]].abs().sum() == 0


def test_token_rewards_put_the_outcome_on_the_last_token_and_subtract_the_kl():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    assert last_token(mask).tolist() == [3, 1, 0]
    outcome = torch.tensor([1.0, 0.5, 1.0])
    kl = torch.full((3, 4), 0.2)
    dense = torch.zeros(3, 4)
    dense[0, 2] = 0.3  # e.g. a step's process reward at the token that ends the step
    r = token_rewards(outcome, mask, kl=kl, kl_beta=0.5, dense=dense)
    _close(r, [[0, -0.1, -0.1 + 0.3, 1 - 0.1], [-0.1, 0.5 - 0.1, 0, 0], [0, 0, 0, 0]])
    _close(token_rewards(outcome, mask), [[0, 0, 0, 1], [0, 0.5, 0, 0], [0, 0, 0, 0]])


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.5]])
    new = torch.tensor([[0.5, -0.1, 9.0]])
    ret = torch.tensor([[1.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: unclipped (0.5-1)^2 = 0.25, clipped V = 0.2: (0.2-1)^2 = 0.64 -> 0.64
    # token 1: within the clip: (-0.1-1)^2 = 1.21 both; token 2 masked out
    assert value_loss(new, old, ret, mask, clip=0.2).item() == pytest.approx(
        0.5 * (0.64 + 1.21) / 2
    )
    assert value_loss(new, old, ret, mask, clip=None).item() == pytest.approx(
        0.5 * (0.25 + 1.21) / 2
    )


def test_whitening_and_explained_variance_over_valid_tokens():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    w = whiten(x, mask)
    assert w[mask.bool()].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)  # std of 1,2,3 is 1
    assert w[~mask.bool()].abs().sum() == 0
    assert whiten(x, mask, shift_mean=False)[mask.bool()].tolist() == pytest.approx([1, 2, 3])
    ret = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = torch.ones(1, 4)
    assert explained_variance(ret, ret, m) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 4), ret, m) == pytest.approx(0.0)
    # residuals 1, -1, 1, -1 (var 4/3) against returns of var 5/3
    off = ret + torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    assert explained_variance(off, ret, m) == pytest.approx(1 - (4 / 3) / (5 / 3))
    assert explained_variance(ret, torch.ones(1, 4), m) == 0.0  # nothing to explain


def test_old_policy_kl_stays_bounded_when_a_rare_token_falls():
    old = torch.tensor([[-0.1, -2.0, -5.0]])
    new = torch.tensor([[-0.2, -12.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    # (rho - 1) - log rho: token 0 moved by -0.1, token 1 by -10 (a rare token pushed down)
    want = ((math.exp(-0.1) - 1 + 0.1) + (math.exp(-10) - 1 + 10)) / 2
    assert old_policy_kl(new, old, mask).item() == pytest.approx(want, rel=1e-5)
    assert old_policy_kl(old, old, mask).item() == 0.0
    # the other direction's k3 would report about e^10 / 2 for the same step
    assert k3_kl(new, old)[0, 1].item() > 2e4


# --- the critic ------------------------------------------------------------------------------


def _seqs(model: TinyModel, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    return [encode_example(model.tokenizer, SFTExample(p, c)) for p, c in pairs]


def test_tiny_hidden_states_are_what_the_logits_project():
    model = TinyModel.create(CFG, 0)
    ids = torch.tensor([[1, 20, 21, 22], [1, 23, 24, 0]])
    attn = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    h = model.hidden_states(ids, attn)
    assert h.shape == (2, 4, 32)
    assert torch.equal(model.module.lm_head(h), model.forward(ids, attn))


def test_critic_starts_at_zero_and_round_trips_through_safetensors(tmp_path):
    policy = TinyModel.create(CFG, 0)
    critic = Critic.from_policy(policy)
    assert critic.backbone.module is not policy.module  # a separate network
    seqs = _seqs(policy, [("1+2=", "3"), ("10+20=", "30")])
    values, mask = critic.values(seqs)
    assert values.abs().sum() == 0 and mask.sum().item() == 2 + 3
    with torch.no_grad():
        critic.head.weight.normal_()
        critic.head.bias.fill_(0.5)
    critic.save(tmp_path / CRITIC_FILE)
    back = Critic.load(tmp_path / CRITIC_FILE, policy)
    assert [v.tolist() for v in frozen_values(back, seqs)] == [
        v.tolist() for v in frozen_values(critic, seqs)
    ]
    other = TinyModel.create(ModelConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=64), 0)
    with pytest.raises(ValueError, match="architecture"):
        Critic.load(tmp_path / CRITIC_FILE, other)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="readable"):
        Critic.load(tmp_path / "bad.safetensors", policy)


def test_critic_on_the_hf_backend(tmp_path):
    pytest.importorskip("transformers")
    from reasonloop.models.hf import HFModel

    cfg = ModelConfig(
        backend="hf",
        hf_config={
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,  # shared tensors: the critic's file must cope
        },
    )
    policy = HFModel.from_config(cfg, 0)
    seqs = _seqs(policy, [("1+2=", "3"), ("10+20=", "30")])
    critic = Critic.from_policy(policy)
    with torch.no_grad():
        critic.head.weight.normal_()
    values, mask = critic.values(seqs)
    assert values.shape == mask.shape and values[mask].abs().min() > 0
    critic.save(tmp_path / CRITIC_FILE)
    back = Critic.load(tmp_path / CRITIC_FILE, policy)
    for a, b in zip(frozen_values(back, seqs), frozen_values(critic, seqs), strict=True):
        torch.testing.assert_close(a, b)


# --- train_ppo on a real tiny model ----------------------------------------------------------


def _groups() -> list[Group]:
    """Reward 1 for the completion that starts with 7; the other three start otherwise."""
    out = []
    for a in (0, 1, 2, 3, 4, 5, 6, 8):
        completions = [f"7{a}", f"{a}7", f"1{a}2", f"3{a}"]
        out.append(Group(f"t{a}", f"{a}?", completions, [1.0, 0.0, 0.0, 0.0]))
    return out


def _first_token_p7(model: TinyModel, groups: list[Group]) -> float:
    """Mean probability that the completion's first token is 7."""
    seqs = _seqs(model, [(g.prompt, "7") for g in groups])
    with torch.no_grad():
        logps, mask = token_logps(model, seqs)
    first = mask.float().argmax(1)
    return float(logps[torch.arange(len(seqs)), first].exp().mean())


def test_ppo_raises_the_reward_and_the_critic_learns_the_values():
    """Four rollouts (as four rounds would be), the critic carried from one to the next. PPO's
    ratio clip lets a token's probability grow by about 1 + clip per rollout, so the policy
    climbs over rollouts; the critic fits each rollout's returns better than before it."""
    model = TinyModel.create(CFG, 0)
    critic = Critic.from_policy(model)
    groups = _groups()
    seqs = _seqs(model, [(g.prompt, c) for g in groups for c in g.completions])

    def rewarded_share() -> float:
        """The expected reward of picking among each group's completions by their probability."""
        logps = torch.stack([x.sum() for x in frozen_token_logps(model, seqs)]).view(8, 4)
        return float(logps.softmax(1)[:, 0].mean())

    ppo = PPOConfig(critic_lr=3e-3)
    cfg = TrainConfig(steps=10, batch_size=16, lr=2e-3, warmup_steps=1)
    share_before, p7_before = rewarded_share(), _first_token_p7(model, groups)
    fit, curves = [], []
    for rollout in range(4):
        old = frozen_token_logps(model, seqs)
        before = frozen_values(critic, seqs)
        _, returns = _ppo_targets(old, before, [1.0, 0, 0, 0] * 8, None, ppo)
        stats = train_ppo(model, critic, groups, cfg, ppo, seed=rollout)
        after, r = torch.cat(frozen_values(critic, seqs)), torch.cat(returns)
        fit.append((float(((torch.cat(before) - r) ** 2).mean()), float(((after - r) ** 2).mean())))
        curves.append(stats)
    ones = torch.ones(1, len(r))
    assert stats["steps"] == 10 and stats["reward_mean"] == pytest.approx(0.25)
    assert stats["groups"] == stats["groups_kept"] == 8
    assert rewarded_share() > max(0.9, share_before + 0.4)
    assert _first_token_p7(model, groups) > 2 * p7_before
    # The value head learns: a zero head explains nothing; the trained one fits the returns.
    assert curves[0]["explained_variance"][0] == pytest.approx(0.0, abs=1e-6)
    assert explained_variance(after[None], r[None], ones) > 0.2
    assert fit[0][1] < 0.85 * fit[0][0] and fit[-1][1] < 0.7 * fit[0][0]
    first, last = curves[0]["value_loss"], curves[-1]["value_loss"]
    assert sum(last) < 0.85 * sum(first)
    assert sum(curves[-1]["explained_variance"]) > sum(curves[0]["explained_variance"]) + 1.0
    assert all(0 <= c <= 1 for c in stats["clip_fraction"]) and stats["approx_kl"][-1] > 0
    assert stats["kl"] == [0.0] * 10  # no reference, no KL to it


def test_ppo_kl_penalty_needs_a_reference_and_is_logged():
    model = TinyModel.create(CFG, 0)
    critic = Critic.from_policy(model)
    cfg = TrainConfig(steps=6, batch_size=16, lr=3e-3, warmup_steps=1)
    with pytest.raises(ValueError, match="reference"):
        train_ppo(model, critic, _groups(), cfg, PPOConfig(kl_beta=0.1), seed=0)
    stats = train_ppo(
        model, critic, _groups(), cfg, PPOConfig(kl_beta=0.1), seed=0, reference=model.copy()
    )
    assert stats["kl"][0] == pytest.approx(0.0, abs=1e-6) and stats["kl"][-1] > 0


# --- the loop ----------------------------------------------------------------------------------

SEED_STEPS = 200
SMALL = {
    "model": {"dim": 48, "n_layers": 2, "n_heads": 2, "threads": 1},
    "seed_train": {"steps": SEED_STEPS, "batch_size": 32, "lr": 0.003},
    "train": {"steps": 6, "batch_size": 16, "lr": 0.0005},
    "tasks": {
        "seed_levels": [1, 2],
        "seed_examples": 400,
        "heldout_levels": [1, 2],
        "heldout_per_level": 8,
    },
    "creator": {"per_round": 16, "start_level": 1, "levels_ahead": 2},
    "reasoner": {"samples": 3, "batch_size": 48},
    "strategy": {"ppo": {"critic_lr": 0.003}},
    "seed": 3,
}
"""Small enough for seconds, trained enough that some samples are right (a reward to learn)."""


def _sets(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _sets(v, f"{prefix}{k}.")
        else:
            out += ["--set", f"{prefix}{k}={json.dumps(v)}"]
    return out


def _cli(out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REASONLOOP_FAULT"}
    if fault:
        env["REASONLOOP_FAULT"] = fault
    args = ["--preset", "ppo", "--out", str(out), "--rounds", "2", "--quiet", *_sets(SMALL)]
    return subprocess.run(
        [sys.executable, "-m", "reasonloop.cli", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ppo_preset_runs_and_a_killed_run_resumes_with_its_critic(tmp_path):
    """`reasonloop run --preset ppo` end to end; then the same run killed (SIGKILL) in round 2's
    PPO steps and started again, which reloads round 1's policy and critic from the checkpoint
    in a new process: it must end byte-identical."""
    one = tmp_path / "straight"
    p = _cli(one)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((one / "summary.json").read_text())
    assert summary["complete"] and summary["preset"] == "ppo"
    for r in (1, 2):
        train = summary["rounds"][r]["train"]
        traces = pq.read_table(one / f"rounds/r00{r}/traces.parquet").num_rows
        assert train["examples"] == traces == 16 * 3 and train["steps"] == 6
        assert 0 < train["reward_mean"] < 1
        for key in ("value_loss_last", "explained_variance_last", "approx_kl_last"):
            assert isinstance(train[key], float), key
        assert "kl_last" in train and "clip_fraction_last" in train
        assert (one / f"checkpoints/r00{r}" / CRITIC_FILE).is_file()
    assert not (one / "checkpoints/r000" / CRITIC_FILE).exists()  # the seed has no critic
    curves = json.loads((one / "manifest.json").read_text())["rounds"]
    ev = [curves[r]["phases"]["train"]["explained_variance"] for r in ("1", "2")]
    assert len(ev[1]) == 6
    # Round 1 starts from a zero head (explains exactly nothing); round 2 from round 1's critic.
    assert ev[0][0] == 0.0 and ev[1][0] != 0.0

    two = tmp_path / "killed"
    p = _cli(two, fault=f"train:{SEED_STEPS + 6 + 3}")  # the 3rd PPO step of round 2
    assert p.returncode == -9, p.stderr[-2000:]
    p = _cli(two)
    assert p.returncode == 0, p.stderr[-2000:]
    for f in ("model.safetensors", CRITIC_FILE):
        got, want = two / "checkpoints/r002" / f, one / "checkpoints/r002" / f
        assert got.read_bytes() == want.read_bytes(), f
    again = json.loads((two / "summary.json").read_text())["rounds"]
    assert [m["train"] for m in again] == [m["train"] for m in summary["rounds"]]

    # A deleted critic is named and its round redone, not replaced by a fresh zero head.
    (two / "checkpoints/r001" / CRITIC_FILE).unlink()
    p = _cli(two)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"checkpoints/r001/{CRITIC_FILE}: missing" in p.stdout + p.stderr
    for f in ("model.safetensors", CRITIC_FILE):
        got, want = two / "checkpoints/r002" / f, one / "checkpoints/r002" / f
        assert got.read_bytes() == want.read_bytes(), f


def test_ppo_without_keeping_the_critic_starts_each_round_afresh(tmp_path):
    overrides = {**SMALL, "rounds": 2, "strategy": {"ppo": {"keep_critic": False}}}
    run(load_config("ppo", overrides=overrides), tmp_path, show_progress=False, log=print)
    assert not list((tmp_path / "checkpoints").rglob(CRITIC_FILE))
    curves = json.loads((tmp_path / "manifest.json").read_text())["rounds"]
    assert curves["2"]["phases"]["train"]["explained_variance"][0] == 0.0
