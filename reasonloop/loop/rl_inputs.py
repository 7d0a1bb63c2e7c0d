"""What a policy-gradient round trains on besides its own verifier-scored groups: stored rounds
(offline RL), a learned reward model in place of the verifier (model-based RL) and dense per-token
rewards (PRIME's implicit reward, or a step checker). Thin orchestration of
`algorithms/offline_rl.py`, `evaluator/reward_model.py`, `evaluator/implicit_reward.py` and
`algorithms/dense_reward.py`, driven by `strategy.offline_rounds` and `strategy.rl`.

Model-based RL (`strategy.rl.reward: orm`): round 1 is rewarded by the verifier and trains the
ORM on its verdicts; from round 2 on the previous round's ORM rewards every sample (this round's
and stored ones) and stays frozen, so no verifier label reaches training after round 1; the
verifier still judges every round, which measures the ORM (calibration) and the policy.

Every input is a function of the run directory and the round's records, so a train phase redone
after a kill rebuilds the same groups and rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from reasonloop.algorithms.dense_reward import place_step_scores, step_end_tokens
from reasonloop.algorithms.offline_rl import stored_groups
from reasonloop.algorithms.policy_gradient import Group, groups_from_round
from reasonloop.config import RunConfig
from reasonloop.evaluator.implicit_reward import ImplicitRewardModel, train_implicit_reward
from reasonloop.evaluator.process_reward_model import PRM_FILE, ProcessRewardModel
from reasonloop.evaluator.reward_model import ORM_FILE, OutcomeRewardModel
from reasonloop.loop.store import RunDir
from reasonloop.models.base import LanguageModel
from reasonloop.tasks.registry import get_family
from reasonloop.types import Task


@dataclass
class RLInputs:
    """Groups to train on, with optional per-token rewards and behaviour log-probs (both laid
    out per group, per completion) and what was done, for the round's record."""

    groups: list[Group]
    dense: list[list[torch.Tensor]] | None = None
    behaviour: list[list[torch.Tensor | None]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def orm_rewards_round(cfg: RunConfig, r: int) -> bool:
    """Model-based RL: this round's rewards come from the previous round's (frozen) ORM."""
    return cfg.strategy.rl.reward == "orm" and r >= 2


def frozen_orm(rd: RunDir, r: int, policy: LanguageModel) -> tuple[OutcomeRewardModel, dict]:
    """The previous round's ORM, carried unchanged into this round's checkpoint."""
    saved = rd.checkpoint(r - 1) / ORM_FILE
    if not saved.exists():
        raise FileNotFoundError(f"{saved}: model-based RL needs the previous round's ORM")
    return OutcomeRewardModel.load(saved, policy), {"frozen": True, "carried": True, "n": 0}


def gold_labels_in_training(cfg: RunConfig, r: int) -> bool:
    """Whether round r's training saw verifier labels (round 0 always: gold reference traces)."""
    if r == 0:
        return True
    if not cfg.uses_gold_after_seed:
        return False
    return not (orm_rewards_round(cfg, r) and not cfg.strategy.rationalize)


def policy_gradient_inputs(
    cfg: RunConfig,
    rd: RunDir,
    r: int,
    by_id: dict[str, Task],
    traces: list,
    judgements: list,
    model: LanguageModel,
    seed: int,
) -> RLInputs:
    """Round r's groups (plus stored rounds'), their rewards, and dense rewards if configured."""
    rl = cfg.strategy.rl
    groups = groups_from_round(by_id, traces, judgements)
    tasks = dict(by_id)
    info: dict[str, Any] = {"reward": "verifier"}
    behaviour: list[list[torch.Tensor | None]] | None = None
    if cfg.strategy.offline_rounds:
        rounds = list(range(max(1, r - cfg.strategy.offline_rounds), r))
        stored, stored_beh, stored_tasks = stored_groups(rd, rounds, cfg.model)
        behaviour = [[None] * len(g.completions) for g in groups] + [list(b) for b in stored_beh]
        groups = groups + stored
        tasks = stored_tasks | tasks
        info |= {"offline_rounds": rounds, "offline_groups": len(stored)}
    n = sum(len(g.rewards) for g in groups)
    if n:
        # The verifier's view of the same samples: next to an ORM's reward it shows hacking.
        info["gold_reward_mean"] = sum(sum(g.rewards) for g in groups) / n
    if orm_rewards_round(cfg, r):
        orm, _ = frozen_orm(rd, r, model)
        prompts = [g.prompt for g in groups for _ in g.completions]
        scores = iter(orm.score(prompts, [c for g in groups for c in g.completions]))
        for g in groups:
            g.rewards = [next(scores) for _ in g.completions]
        info["reward"] = "orm"
    dense = None
    if rl.dense_reward != "none" and groups:
        dense, info["dense"] = dense_rewards(cfg, rd, r, groups, tasks, model, seed)
    return RLInputs(groups, dense, behaviour, info)


def dense_rewards(
    cfg: RunConfig,
    rd: RunDir,
    r: int,
    groups: list[Group],
    tasks: dict[str, Task],
    model: LanguageModel,
    seed: int,
) -> tuple[list[list[torch.Tensor]], dict[str, Any]]:
    """Per group, per completion: 1-D rewards over the completion tokens (unweighted)."""
    rl = cfg.strategy.rl
    prompts = [g.prompt for g in groups for _ in g.completions]
    comps = [c for g in groups for c in g.completions]
    if rl.dense_reward == "implicit":
        # pi_phi and pi_ref from the policy that sampled the round; labels: the rewards the
        # round trains on (the verifier's 0/1, or the ORM's probabilities under model-based RL).
        irm = ImplicitRewardModel.from_policy(model, rl.implicit_beta)
        labels = [min(1.0, max(0.0, x)) for g in groups for x in g.rewards]
        out = train_implicit_reward(irm, prompts, comps, labels, rl.implicit_train, seed + 2)
        flat = irm.token_rewards(prompts, comps)
        info = {k: out[k] for k in ("n", "n_pos", "steps", "loss_first", "loss_last")}
    elif rl.dense_reward == "prm":
        # The PRM the round's process phase trained; its last score (the answer's) is left to
        # the outcome reward.
        prm = ProcessRewardModel.load(rd.round_dir(r) / PRM_FILE, model)
        tok = model.tokenizer
        ends = [step_end_tokens(tok, c) for c in comps]
        probs = prm.step_scores(prompts, comps)
        scores = [[p - 1.0 for p in row[: len(e)]] for row, e in zip(probs, ends, strict=True)]
        lengths = [len(tok.encode(c if c.endswith("\n") else c + "\n")) for c in comps]
        flat = place_step_scores(scores, ends, lengths)
        info = {"steps_scored": sum(len(s) for s in scores)}
    else:  # step-check: the family's own step verifier, where it can check a step
        family = get_family(cfg.tasks.family, **cfg.tasks.options)
        check = getattr(family, "check_step", None)
        if check is None:
            raise ValueError(
                f"strategy.rl.dense_reward 'step-check': family {cfg.tasks.family!r} has no "
                "check_step"
            )
        tok = model.tokenizer
        scores, ends, lengths = [], [], []
        for g in groups:
            for c in g.completions:
                steps, _ = family.parse(c)
                verdicts = [check(tasks[g.task_id], s) for s in steps]
                scores.append([None if v is None else float(v) - 1.0 for v in verdicts])
                ends.append(step_end_tokens(tok, c))
                lengths.append(len(tok.encode(c if c.endswith("\n") else c + "\n")))
        flat = place_step_scores(scores, ends, lengths)
        checked = [s for row in scores for s in row if s is not None]
        info = {"steps_checked": len(checked), "steps_wrong": sum(1 for s in checked if s < 0)}
    rows = iter(flat)
    dense = [[next(rows) for _ in g.completions] for g in groups]
    info["mean"] = float(torch.cat(flat).mean()) if flat else 0.0
    return dense, info
