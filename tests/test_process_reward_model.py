"""The process reward model: its loss, aggregation, scored places and first-flagged step by hand;
a real tiny PRM that learns to find an injected wrong step; save/load; the prm-cooperative loop
(checkpoints, step records, calibration, drops, resume after SIGKILL); PRM dense rewards under
GRPO."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

from reasonloop.algorithms.dense_reward import step_end_tokens
from reasonloop.algorithms.logprobs import token_logps
from reasonloop.algorithms.value_head import Critic
from reasonloop.config import ConfigError, ModelConfig, TrainConfig, load_config
from reasonloop.evaluator.calibration import auroc
from reasonloop.evaluator.math_shepherd import labels_from_first_error
from reasonloop.evaluator.process_reward_model import (
    PRM_FILE,
    SURPRISE_SCALE,
    ProcessRewardModel,
    aggregate,
    cached_features,
    calibration_report,
    first_flagged,
    inject_error,
    prm_loss,
    score_places,
    stack_features,
    train_prm,
)
from reasonloop.evaluator.reward_model import ORM_FILE, OutcomeRewardModel
from reasonloop.evaluator.step_agreement import agreement_labels
from reasonloop.loop.process_reward import LABELS_FILE
from reasonloop.loop.rl_inputs import policy_gradient_inputs
from reasonloop.loop.run import run
from reasonloop.loop.store import RunDir, read_records
from reasonloop.models import load_model
from reasonloop.models.tiny import TinyModel
from reasonloop.reasoner.format import parse
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.tasks.families.sorting import SortingFamily
from reasonloop.types import Decision, Judgement, Task, Trace

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64, threads=1)


def _bce(logit: float, y: float, pos_weight: float = 1.0) -> float:
    """-(w y log s(l) + (1 - y) log(1 - s(l))), written out from the definition."""
    p = 1 / (1 + math.exp(-logit))
    return -(pos_weight * y * math.log(p) + (1 - y) * math.log(1 - p))


def test_prm_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 50.0, -50.0]], requires_grad=True)
    # soft labels allowed; the masked places hold labels that would cost a lot if counted
    labels = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    counted = [(0.0, 1.0), (2.0, 0.0), (-1.0, 0.5), (1.0, 0.0)]
    want = sum(_bce(x, y) for x, y in counted) / 4
    loss = prm_loss(logits, labels, mask)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[1, 1:].tolist() == [0.0, 0.0]  # masked places get no gradient
    # d/dl of BCE is sigmoid(l) - y, divided by the 4 counted places
    assert float(logits.grad[0, 1]) == pytest.approx((1 / (1 + math.exp(-2.0)) - 0.0) / 4)

    weighted = prm_loss(logits.detach(), labels, mask, pos_weight=3.0)
    want_w = sum(_bce(x, y, 3.0) for x, y in counted) / 4
    assert float(weighted) == pytest.approx(want_w, rel=1e-6)
    # a label of 0 is untouched by the weight, a label of 1 is scaled by it
    assert _bce(2.0, 0.0, 3.0) == _bce(2.0, 0.0) and _bce(0.0, 1.0, 3.0) == 3 * math.log(2)

    none = torch.zeros(2, 3, dtype=torch.bool)
    assert float(prm_loss(logits.detach(), labels, none)) == 0.0
    # bf16 logits are lifted to float32 before the loss
    half = prm_loss(logits.detach().bfloat16(), labels, mask)
    assert half.dtype == torch.float32


def test_aggregate_by_hand() -> None:
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "min") == 0.5
    assert aggregate(s, "mean") == pytest.approx(2.2 / 3)
    assert aggregate(s, "last") == 0.8
    assert aggregate(s, "product") == pytest.approx(0.36)
    for how in ("min", "mean", "last", "product"):
        assert aggregate([], how) == 0.0  # nothing vouches for an empty completion
        assert aggregate([0.25], how) == 0.25
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(s, "max")  # type: ignore[arg-type]


def test_first_flagged_by_hand() -> None:
    assert first_flagged([0.9, 0.4, 0.2, 0.1], 3) == 1
    assert first_flagged([0.9, 0.8, 0.3], 2) is None  # the third score is the answer's
    assert first_flagged([0.9, 0.8, 0.3], 3) == 2
    assert first_flagged([0.5, 0.49], 2) == 1  # strictly below the threshold
    assert first_flagged([0.6, 0.7], 2, threshold=0.65) == 0
    assert first_flagged([0.1], 0) is None and first_flagged([], 3) is None


@pytest.mark.parametrize(
    ("completion", "places"),
    [
        ("1+2+0=3;4+5+0=9#930", [7, 15, 18]),  # each separator, the `#`, the answer's end
        ("1+2+0=3;4+5+0=9#930  ", [7, 15, 18]),  # trailing blanks are not the answer
        ("1+2+0=3#3\ngarbage;#x", [7, 8]),  # only the first line counts, as in `parse`
        ("1+2+0=3;4+5+0=9;", [7, 15]),  # steps in progress (search): one per finished step
        ("1+2+0=3#", [7]),  # no answer after `#`: no answer place
        ("1+2+0=3#   ", [7]),
        ("42", [1]),  # a bare answer
        ("42  ", [1]),
        ("a;b", [2]),  # no `#` and no trailing `;`: `parse` reads it all as the answer
        ("", []),
        ("   ", []),
        ("#", []),
        (";", []),
        (";;", []),
        ("a;;b#c", [1, 4, 5]),  # the empty step between `;;` is no step
        (";;#5", [3]),
        ("1#2#3", [3, 4]),  # the last `#` marks the answer, as in `parse`
        ("a\0b#c", [3, 4]),  # any character may be in model text: one step here
        ("\n1;2#3", []),  # an empty first line
    ],
)
def test_score_places_by_hand(completion: str, places: list[int]) -> None:
    assert score_places(completion) == places


def test_score_places_agree_with_parse_on_garbage() -> None:
    # One place per step `parse` finds, plus one when it finds an answer (with a `#`).
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(";#ab 7\n\0") for _ in range(rng.randint(0, 12)))
        steps, answer = parse(text)
        line = text.split("\n", 1)[0]
        got = score_places(text)
        if "#" in line:
            assert len(got) == len(steps) + (answer is not None), repr(text)
        elif line.endswith(";"):
            assert len(got) == len([s for s in line.split(";") if s]), repr(text)
        else:
            assert len(got) == (answer is not None), repr(text)
        assert all(line[p] in ";#" or p == len(line.rstrip()) - 1 for p in got), repr(text)
        assert got == sorted(set(got)), repr(text)


def test_a_fresh_prm_is_neutral_scores_every_place_and_leaves_the_policy_alone() -> None:
    policy = TinyModel.create(CFG, 0)
    before = {k: v.clone() for k, v in policy.module.state_dict().items()}
    prm = ProcessRewardModel.from_policy(policy)
    comps = ["1;1,2#1,2,4", "1;1,2;", "7", "", "#", ";;#", "a;;b#c", "1#2#3", "zz;#\n1;2#3"]
    scores = prm.step_scores(["sort:4,2,1="] * len(comps), comps)
    assert [len(s) for s in scores] == [len(score_places(c)) for c in comps]
    assert scores[3] == [] and scores[4] == []
    assert all(x == 0.5 for row in scores for x in row)  # the zero head: no opinion yet
    # nothing is flagged: 0.5 is not below the threshold
    assert all(first_flagged(row, len(row)) is None for row in scores)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        prm.step_scores(["a=", "b="], ["1"])
    cfg = TrainConfig(lr=1e-2, steps=3, warmup_steps=0, batch_size=4)
    # one label per place: 2 steps + answer, 2 steps in progress, a bare answer
    info = train_prm(prm, ["sort:4,2,1="] * 3, comps[:3], [[1.0, 0.0, 1.0], [1, 0], [0.0]], cfg, 0)
    assert info["steps"] == 3 and info["n"] == 3 and info["places"] == 6
    for k, v in policy.module.state_dict().items():
        assert torch.equal(v, before[k]), k  # the PRM trained a copy
    moved = prm.step_scores(["sort:4,2,1="], [comps[0]])[0]
    assert all(x != 0.5 for x in moved)


def test_the_surprise_term_is_the_least_log_prob_of_each_steps_tokens() -> None:
    # By hand against the policy's own token log-probs: logit = head + SCALE * w * (least
    # log p of the tokens since the previous place); off, the head alone.
    policy = TinyModel.create(CFG, 3)
    prm = ProcessRewardModel.from_policy(policy)
    with torch.no_grad():
        prm.head.bias.fill_(0.25)
        prm.surprise.weight.fill_(0.07)
    prompts = ["sort:4,2,1=", "sort:3,1="]
    comps = ["1;1,2#1,2,4", "1;1,3;"]
    enc = prm.encode(prompts, comps)
    with torch.no_grad():
        token, _ = token_logps(policy, [(ids, p_len) for ids, p_len, _ in enc])
    with torch.no_grad():
        logits, mask = prm.logits(enc)
    for r, (_, p_len, pos) in enumerate(enc):
        start = p_len
        for u, end in enumerate(pos):
            # token_logps' column t - 1 holds log p of input token t
            least = min(float(token[r, t - 1]) for t in range(start, end + 1))
            want = 0.25 + SURPRISE_SCALE * 0.07 * least
            assert float(logits[r, u]) == pytest.approx(want, abs=1e-4), (r, u)
            start = end + 1
        assert int(mask[r].sum()) == len(pos)
    prm.use_surprise(False)
    assert float(prm.surprise.weight) == 0.0 and not prm.surprise.weight.requires_grad
    with torch.no_grad():
        plain, _ = prm.logits(enc)
    assert torch.allclose(plain[mask], torch.full_like(plain[mask], 0.25))
    # trained with the term off, the weight stays at zero
    cfg = TrainConfig(lr=1e-2, steps=2, warmup_steps=0, batch_size=2)
    info = train_prm(prm, prompts, comps, [[1.0, 0.0, 0.0], [1.0, 0.0]], cfg, 0, surprise=False)
    assert info["surprise_weight"] == 0.0
    info = train_prm(prm, prompts, comps, [[1.0, 0.0, 0.0], [1.0, 0.0]], cfg, 0)
    assert info["surprise_weight"] != 0.0


def test_train_prm_skips_misaligned_labels_and_refuses_bad_ones() -> None:
    prm = ProcessRewardModel.from_policy(TinyModel.create(CFG, 0))
    cfg = TrainConfig(lr=1e-3, steps=2, warmup_steps=0, batch_size=2)
    prompts = ["sort:4,2,1="] * 3
    comps = ["1;1,2#1,2,4", "1;1,2#1,2,4", ""]
    # 3 places, 2 labels (would land on the wrong steps), and an empty completion: skipped
    info = train_prm(prm, prompts, comps, [[1, 1, 1], [1, 1], []], cfg, 0)
    assert (info["n"], info["skipped"], info["places"]) == (1, 2, 3)
    nothing = train_prm(prm, prompts[:1], comps[:1], [[1, 1]], cfg, 0)
    assert nothing["steps"] == 0 and nothing["skipped"] == 1 and nothing["losses"] == []
    with pytest.raises(ValueError, match=r"step labels must be in \[0, 1\], got 2"):
        train_prm(prm, prompts[:1], comps[:1], [[1, 2, 1]], cfg, 0)
    with pytest.raises(ValueError, match="3 prompts, 3 completions, 1 label lists"):
        train_prm(prm, prompts, comps, [[1, 1, 1]], cfg, 0)
    # balance: the label-1 places are weighted n_low / n_high
    bal = train_prm(prm, prompts[:1], comps[:1], [[1, 0.0, 1]], cfg, 0, balance=True)
    assert bal["pos_weight"] == 0.5


@pytest.mark.parametrize("family", [SortingFamily(), AdditionFamily(steps=True)])
def test_inject_error_makes_one_wrong_step_and_keeps_the_rest(family) -> None:
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        task = family.make(rng, 4)
        steps, answer = family.reference(task)
        made = inject_error(family, task, rng)
        assert made is not None
        text, j = made
        bad_steps, bad_answer = family.parse(text)
        assert bad_answer == answer and len(bad_steps) == len(steps)
        assert [i for i, (a, b) in enumerate(zip(bad_steps, steps, strict=True)) if a != b] == [j]
        assert family.check_step(task, bad_steps[j]) is False
        assert all(family.check_step(task, s) for i, s in enumerate(bad_steps) if i != j)
        seen.add(j)
        # seeded: the same draw gives the same error
        assert inject_error(family, task, random.Random(7)) == inject_error(
            family, task, random.Random(7)
        )
    assert seen == set(range(len(steps)))  # every step can be the wrong one
    # nothing to make wrong: a family written without steps
    plain = AdditionFamily(steps=False)
    assert inject_error(plain, plain.make(rng, 3), rng) is None


# --- a real tiny PRM that learns to find a wrong step ----------------------------------------

LEVEL = 5
"""Sorting 5 items: 4 steps (each the sorted prefix one longer), so a guess is right 1 in 4."""


def _tasks(fam: SortingFamily, n: int, rng: random.Random) -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    while len(tasks) < n:
        t = fam.make(rng, LEVEL)
        tasks[t.id] = t
    return tasks


def _training_set(
    fam: SortingFamily, tasks: dict[str, Task], rng: random.Random
) -> tuple[list[str], list[str], list[list[float]]]:
    """Half the references as they are, half with one wrong step from `inject_error`, and exact
    labels: 1 before the wrong step and 0 from it on (the shape of Monte-Carlo labels when no
    rollout recovers from a wrong step), then the answer's label (the answer stays right)."""
    prompts, comps, labels = [], [], []
    for t in tasks.values():
        steps, answer = fam.reference(t)
        first = None
        if rng.random() < 0.5 and (made := inject_error(fam, t, rng)) is not None:
            text, first = made
            steps = fam.parse(text)[0]
        prompts.append(t.prompt)
        comps.append(fam.render(steps, answer))
        labels.append([*labels_from_first_error(len(steps), first), 1.0])
    return prompts, comps, labels


@pytest.fixture(scope="module")
def learned() -> tuple[ProcessRewardModel, SortingFamily, dict[str, Task], dict]:
    """A PRM (a fresh tiny policy's copy) trained 400 steps on 2000 labelled traces.

    Sorting, not addition: on `x+y+c=t` steps a PRM this small learns the carry check within a
    few hundred steps but not the digit sums or the copies from the prompt (first-error accuracy
    stayed at or below a guess's after 600-1500 steps), while sorted-prefix steps take 400."""
    torch.manual_seed(0)
    fam = SortingFamily()
    train = _tasks(fam, 2000, random.Random(1))
    held = {k: v for k, v in _tasks(fam, 2300, random.Random(2)).items() if k not in train}
    prompts, comps, labels = _training_set(fam, train, random.Random(3))
    prm = ProcessRewardModel.from_policy(
        TinyModel.create(ModelConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=64, threads=1), 0)
    )
    cfg = TrainConfig(lr=3e-3, steps=400, batch_size=32, warmup_steps=10)
    # The policy is untrained here, so its surprise is noise: the head alone is under test.
    info = train_prm(prm, prompts, comps, labels, cfg, seed=0, surprise=False)
    return prm, fam, dict(list(held.items())[:200]), info


def test_a_frozen_backbone_trains_only_the_head_and_the_surprise_weight() -> None:
    """`train_backbone=False`: the backbone stays the policy's, bit for bit; the head and the
    surprise weight learn from features computed once, and those cached features give the same
    logits as a forward pass."""
    torch.manual_seed(0)
    fam = SortingFamily()
    prompts, comps, labels = _training_set(fam, _tasks(fam, 96, random.Random(1)), random.Random(3))
    policy = TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=64), 0)
    prm = ProcessRewardModel.from_policy(policy)
    before = {k: v.clone() for k, v in prm.backbone.module.state_dict().items()}
    cfg = TrainConfig(lr=1e-2, steps=60, batch_size=16, warmup_steps=1)
    info = train_prm(prm, prompts, comps, labels, cfg, seed=0, train_backbone=False)
    after = prm.backbone.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(v, policy.module.state_dict()[k]) for k, v in after.items())
    assert all(p.requires_grad for p in prm.backbone.module.parameters())  # flags restored
    assert prm.head.weight.abs().sum() > 0 and info["surprise_weight"] != 0.0
    assert info["steps"] == 60 and info["n"] == 96
    assert sum(info["losses"][-10:]) / 10 < sum(info["losses"][:5]) / 5

    # The cache the training read, against the forward pass scoring does, on one padded batch.
    batch = prm.encode(prompts[:7], comps[:7])
    prm.module.eval()
    with torch.no_grad():
        direct, mask = prm.logits(batch)
        places, least, same_mask = stack_features(cached_features(prm, batch))
        cached = prm.place_logits(places, least, same_mask)
    assert torch.equal(mask, same_mask) and least is not None
    assert torch.allclose(direct, cached, atol=1e-5)


def _injected(
    fam: SortingFamily, tasks: dict[str, Task], seed: int
) -> tuple[list[str], list[str], list[int]]:
    rng = random.Random(seed)
    made = [(t, inject_error(fam, t, rng)) for t in tasks.values()]
    return (
        [t.prompt for t, x in made if x],
        [x[0] for _, x in made if x],
        [x[1] for _, x in made if x],
    )


def test_a_trained_prm_finds_the_first_wrong_step_of_held_out_traces(learned) -> None:
    prm, fam, held, info = learned
    assert (info["n"], info["skipped"], info["steps"]) == (2000, 0, 400)
    assert sum(info["losses"][-20:]) / 20 < 0.5 * sum(info["losses"][:10]) / 10
    # Held-out references, each with one wrong step injected: is the first step the PRM scores
    # below 0.5 that step? A guess among the 4 steps is right 1 in 4; a fresh PRM flags none.
    report = calibration_report(prm, fam, held, [], {}, "min", injected=200, seed=5)
    assert report["injected_n"] == 200
    located = report["first_error_accuracy_injected"]
    # measured 0.62 here (0.49-0.62 over three seeds of data and weights); chance is 0.25
    assert report["first_error_chance_injected"] == 0.25  # sorting here: 4 steps per trace
    assert located > 0.4, located
    fresh = ProcessRewardModel.from_policy(TinyModel.create(CFG, 0))
    blank = calibration_report(fresh, fam, held, [], {}, "min", injected=200, seed=5)
    assert blank["first_error_accuracy_injected"] == 0.0

    # The same tasks' correct references: mostly not flagged at all, and scored above the
    # injected ones (min over the steps).
    tasks = list(held.values())
    refs = [fam.render(*fam.reference(t)) for t in tasks]
    ref_scores = prm.step_scores([t.prompt for t in tasks], refs)
    clean = sum(first_flagged(s, len(s) - 1) is None for s in ref_scores) / len(ref_scores)
    assert clean > 0.7, clean  # measured 0.92 (0.80-0.96 over three seeds)
    prompts, comps, _ = _injected(fam, held, 6)
    bad_scores = prm.step_scores(prompts, comps)
    agg = [aggregate(s, "min") for s in ref_scores + bad_scores]
    separation = auroc(agg, [True] * len(ref_scores) + [False] * len(bad_scores))
    assert separation is not None and separation > 0.75, separation  # measured 0.84 (0.82-0.86)


def test_a_partial_completion_scores_as_the_full_ones_prefix(learned) -> None:
    # What step-level search relies on: a step's score depends only on the text up to it.
    prm, fam, held, _ = learned
    tasks = list(held.values())[:20]
    full = [fam.render(*fam.reference(t)) for t in tasks]
    partial = [c[: c.index(";", c.index(";") + 1) + 1] for c in full]  # two steps and their `;`
    a = prm.step_scores([t.prompt for t in tasks], full)
    b = prm.step_scores([t.prompt for t in tasks], partial)
    assert all(len(y) == 2 for y in b)
    for x, y in zip(a, b, strict=True):
        assert y == pytest.approx(x[:2], abs=1e-5)
    assert len({round(x[0], 4) for x in a}) > 1  # the scores do depend on the text


def test_save_load_round_trip_and_other_files_refused(learned, tmp_path: Path) -> None:
    prm, fam, held, _ = learned
    prompts, comps, _ = _injected(fam, dict(list(held.items())[:30]), 7)
    prm.save(tmp_path / PRM_FILE)
    arch = prm.backbone.config.model_copy()
    back = ProcessRewardModel.load(tmp_path / PRM_FILE, TinyModel.create(arch, 1))
    assert back.step_scores(prompts, comps) == prm.step_scores(prompts, comps)

    policy = TinyModel.create(arch, 0)
    Critic.from_policy(policy).save(tmp_path / "critic.safetensors")
    OutcomeRewardModel.from_policy(policy).save(tmp_path / ORM_FILE)
    policy.save(tmp_path / "policy")
    for other in ("critic.safetensors", ORM_FILE, "policy/model.safetensors"):
        with pytest.raises(ValueError, match="not a process reward model written by save"):
            ProcessRewardModel.load(tmp_path / other, policy)
    with pytest.raises(ValueError, match="not a reward model"):  # and the other way round
        OutcomeRewardModel.load(tmp_path / PRM_FILE, policy)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00not a header at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ProcessRewardModel.load(tmp_path / "junk.safetensors", policy)
    with pytest.raises(FileNotFoundError, match="no a process reward model here"):
        ProcessRewardModel.load(tmp_path / "missing.safetensors", policy)
    with pytest.raises(ValueError, match="does not fit the policy's architecture"):
        ProcessRewardModel.load(tmp_path / PRM_FILE, TinyModel.create(CFG, 0))


# --- the prm-cooperative loop ------------------------------------------------------------------

PRM = "evaluator.process_reward_model"
LOOP = {
    "model.dim": 32,
    "model.n_layers": 2,
    "model.n_heads": 2,
    "model.threads": 1,
    "seed_train.steps": 200,
    "seed_train.lr": 0.003,
    "seed_train.batch_size": 32,
    "train.steps": 4,
    "train.batch_size": 16,
    "tasks.seed_levels": "[1]",
    "tasks.seed_examples": 300,
    "tasks.heldout_levels": "[1,2]",
    "tasks.heldout_per_level": 4,
    "creator.per_round": 8,
    "creator.start_level": 1,
    "reasoner.samples": 3,
    "reasoner.batch_size": 32,
    "reasoner.max_new_tokens": 32,
    f"{PRM}.max_traces": 12,
    f"{PRM}.mc_samples": 2,
    f"{PRM}.train.steps": 6,
    f"{PRM}.train.batch_size": 8,
    f"{PRM}.train.warmup_steps": 1,
    f"{PRM}.calibration_samples": 2,
    f"{PRM}.injected": 8,
    f"{PRM}.threshold": 0.5,  # the preset's 0.2 may drop nothing from so small a run
}
"""prm-cooperative at its smallest: a seed that gets some 1-digit sums right, two rounds."""
SEED_STEPS, PRM_STEPS, TRAIN_STEPS, THRESHOLD = 200, 6, 4, 0.5


def _cli(
    out: Path, fault: str | None = None, changes: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`reasonloop run` in a real subprocess (so a fault's SIGKILL kills only that run), with
    `changes` set on top of LOOP."""
    env = {k: v for k, v in os.environ.items() if k != "REASONLOOP_FAULT"}
    if fault:
        env["REASONLOOP_FAULT"] = fault
    sets = [a for k, v in (LOOP | (changes or {})).items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "reasonloop.cli", "run", "--preset", "prm-cooperative"]
    return subprocess.run(
        [*cmd, "--out", str(out), "--quiet", "--rounds", "2", "--seed", "0", *sets],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def prm_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prm") / "run"
    p = _cli(out)
    assert p.returncode == 0, p.stderr
    return out


def _round_records(out: Path, r: int, name: str, cls):
    return read_records(out / "rounds" / f"r{r:03d}" / name, cls)


def test_prm_loop_checkpoints_and_step_records(prm_run: Path) -> None:
    ckpt = prm_run / "checkpoints"
    assert not (ckpt / "r000" / PRM_FILE).exists()  # the seed round trains no PRM
    assert not (prm_run / "rounds" / "r000" / LABELS_FILE).exists()
    for r in (1, 2):
        # trained in the process phase, carried into the round's checkpoint unchanged
        saved = (ckpt / f"r{r:03d}" / PRM_FILE).read_bytes()
        assert saved == (prm_run / "rounds" / f"r{r:03d}" / PRM_FILE).read_bytes()
    assert (ckpt / "r001" / PRM_FILE).read_bytes() != (ckpt / "r002" / PRM_FILE).read_bytes()
    # train_backbone: false (the preset's): each round's PRM reads the features of the policy
    # that sampled the round, round 2's too, though it carries round 1's head
    assert load_config("prm-cooperative").evaluator.process_reward_model.train_backbone is False
    for r in (1, 2):
        with (
            safe_open(str(ckpt / f"r{r:03d}" / PRM_FILE), "pt") as prm,
            safe_open(str(ckpt / f"r{r - 1:03d}" / "model.safetensors"), "pt") as policy,
        ):
            assert {f"backbone.{k}" for k in policy.keys()} < set(prm.keys())
            for k in policy.keys():
                assert torch.equal(prm.get_tensor(f"backbone.{k}"), policy.get_tensor(k))

    cfg = load_config("prm-cooperative")
    for r in (1, 2):
        tasks = {t.id: t for t in _round_records(prm_run, r, "tasks.parquet", Task)}
        traces = {t.id: t for t in _round_records(prm_run, r, "traces.parquet", Trace)}
        outcome = {
            j.trace_id: j.verdict
            for j in _round_records(prm_run, r, "judgements.parquet", Judgement)
        }
        steps = _round_records(prm_run, r, LABELS_FILE, Judgement)
        assert steps and {j.level for j in steps} == {"step"} and {j.round for j in steps} == {r}
        labels = [j for j in steps if j.evaluator == f"math-shepherd:r{r}"]
        scored = [j for j in steps if j.evaluator == f"prm:r{r}"]
        assert len(labels) + len(scored) == len(steps)
        # solved_only: only traces of tasks one of the round's samples solved, 12 at most
        solved = {traces[t].task_id for t, ok in outcome.items() if ok}
        eligible = [t for t in traces.values() if t.id in outcome and t.task_id in solved]
        assert len(labels) == min(12, len(eligible)) > 0
        assert {traces[j.trace_id].task_id for j in labels} <= solved
        for j in labels:  # one label per step, then the answer's: the trace's verdict
            tr = traces[j.trace_id]
            assert tasks[tr.task_id].answer is not None
            assert len(j.scores) == len(tr.steps) + 1 and all(0 <= x <= 1 for x in j.scores)
            assert all(x in (0.0, 0.5, 1.0) for x in j.scores[:-1])  # shares of 2 rollouts
            assert j.scores[-1] == float(outcome[j.trace_id]) == float(j.verdict)
        # the PRM scored exactly the traces the verifier's post-processing kept
        decisions = {
            d.trace_id: d for d in _round_records(prm_run, r, "decisions.parquet", Decision)
        }
        kept_before = {j.trace_id for j in scored}
        for j in scored:
            tr = traces[j.trace_id]
            assert outcome[tr.id] is True
            assert len(j.scores) == len(score_places(tr.text))
            assert all(0 < x < 1 for x in j.scores)
            ok = aggregate(j.scores, cfg.evaluator.process_reward_model.aggregation) >= THRESHOLD
            assert j.verdict is ok
            d = decisions[tr.id]
            if not ok:
                assert not d.kept and d.reason == f"prm_score below {THRESHOLD}"
            else:
                assert d.kept or d.reason == "prm rank below top 2"
        # nothing else was dropped by the PRM
        assert all(
            d.trace_id in kept_before for d in decisions.values() if d.reason.startswith("prm")
        )


def test_prm_loop_with_step_agreement_caps_the_mc_labels(tmp_path: Path) -> None:
    out = tmp_path / "run"
    p = _cli(out, changes={f"{PRM}.agreement": "true"})
    assert p.returncode == 0, p.stderr
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    lowered = 0
    for r in (1, 2):
        traces = {t.id: t for t in _round_records(out, r, "traces.parquet", Trace)}
        outcome = {j.trace_id for j in _round_records(out, r, "judgements.parquet", Judgement)}
        steps = _round_records(out, r, LABELS_FILE, Judgement)
        mc = [j for j in steps if j.evaluator == f"math-shepherd:r{r}"]
        agreed = {j.trace_id: j.scores for j in steps if j.evaluator == f"agreement:r{r}"}
        # every labelled trace's support among all the round's judged samples of its task
        support = agreement_labels([t for t in traces.values() if t.id in outcome])
        assert mc and list(agreed) == [j.trace_id for j in mc]
        assert all(agreed[t] == support[t] for t in agreed)
        assert all(x in (0.0, 0.5, 1.0) for s in agreed.values() for x in s)  # of 2 others
        # the PRM trained on the smaller label per step: the round counts the traces it lowered
        below = [
            j
            for j in mc
            if any(s < x for s, x in zip(agreed[j.trace_id], j.scores[:-1], strict=True))
        ]
        train = rounds[r]["calibration"]["prm"]["train"]
        assert train["lowered_by_agreement"] == len(below)
        lowered += len(below)
    assert lowered > 0


def _strip_seconds(x):
    if isinstance(x, dict):
        return {k: _strip_seconds(v) for k, v in x.items() if k != "seconds"}
    return x


def test_prm_loop_reports_calibration_cost_and_drops(prm_run: Path) -> None:
    summary = json.loads((prm_run / "summary.json").read_text())
    rounds = summary["rounds"]
    assert summary["complete"] and [m["round"] for m in rounds] == [0, 1, 2]
    assert "calibration" not in rounds[0]
    aurocs, drops, corrupted = [], 0, 0
    for m in rounds[1:]:
        cal = m["calibration"]["prm"]
        assert cal["n"] == 8 * 2 and 0 <= cal["positives"] <= cal["n"]  # held-out x samples
        assert cal["auroc"] is None or 0.0 <= cal["auroc"] <= 1.0
        aurocs.append(cal["auroc"])
        assert 0.0 <= cal["ece"] <= 1.0
        assert cal["first_error_n"] > 0 and 0.0 <= cal["first_error_accuracy"] <= 1.0
        assert cal["injected_n"] == 8 and 0.0 <= cal["first_error_accuracy_injected"] <= 1.0
        cost = cal["labelling"]
        # at most max_traces, fewer where fewer tasks were solved (solved_only)
        assert cost["method"] == "full" and 0 < cost["traces"] <= 12
        # full scan: mc_samples rollouts from every step prefix
        assert cost["prefixes"] == cost["steps"] > 0 and cost["rollouts"] == 2 * cost["steps"]
        assert cost["rollouts_per_step"] == 2.0 and cost["seconds"] >= 0
        # the labelled traces, and one corrupted copy at most of each (corruptions: 1.0)
        train = cal["train"]
        assert train["steps"] == PRM_STEPS and 0 <= train["corrupted"] <= cost["traces"]
        assert train["n"] - train["corrupted"] <= cost["traces"]
        corrupted += train["corrupted"]
        assert cal["train"]["surprise_weight"] != 0.0  # on by default, and trained
        # the PRM's drops are in the round's counts, with their reason
        below = f"prm_score below {THRESHOLD}"
        assert m["data"]["dropped"].get(below, 0) == cal["dropped"].get(below, 0)
        drops += sum(cal["dropped"].values())
        # the round's metrics file says the same
        metrics = json.loads(
            (prm_run / "rounds" / f"r{m['round']:03d}" / "metrics.json").read_text()
        )
        assert metrics["calibration"]["prm"] == cal
    assert [m["calibration"]["prm"]["train"]["carried"] for m in rounds[1:]] == [False, True]
    assert drops > 0  # this run's PRM does reject some of the verifier's kept traces
    assert corrupted > 0
    assert any(a is not None for a in aurocs)  # some round has both right and wrong samples


def _records(out: Path) -> dict[str, list[dict]]:
    files = sorted((out / "rounds").rglob("*.parquet")) + [out / "heldout.parquet"]
    return {str(f.relative_to(out)): pq.read_table(f).to_pylist() for f in files}


def _results(out: Path) -> list[dict]:
    """Each round's figures, without the wall-clock ones (seconds, tokens/s)."""
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    keep = ("round", "heldout", "data", "frontier", "next_frontier", "calibration")
    train = ("examples", "steps", "tokens", "loss_first", "loss_last")
    return [
        {k: _strip_seconds(m.get(k)) for k in keep} | {k: m["train"][k] for k in train}
        for m in rounds
    ]


@pytest.mark.parametrize(
    ("fault", "r"),
    [
        # the 3rd PRM training step of round 1's process phase (after the seed's steps)
        (f"train:{SEED_STEPS + 3}", 1),
        # round 2's, which continues the PRM carried in round 1's checkpoint
        (f"train:{SEED_STEPS + PRM_STEPS + TRAIN_STEPS + 3}", 2),
    ],
)
def test_prm_loop_killed_in_the_process_phase_resumes_to_identical_records(
    tmp_path: Path, prm_run: Path, fault: str, r: int
) -> None:
    out = tmp_path / "run"
    p = _cli(out, fault)
    assert p.returncode == -9, f"the fault {fault} did not fire: {p.returncode} {p.stderr[-500:]}"
    # it died where it was meant to: round r sampled and judged, its process phase unfinished
    phases = json.loads((out / "manifest.json").read_text())["rounds"][str(r)]["phases"]
    assert "solve" in phases and "process" not in phases, sorted(phases)
    p = _cli(out)
    assert p.returncode == 0, p.stderr
    assert _records(out) == _records(prm_run)
    assert _results(out) == _results(prm_run)
    for q in (1, 2):
        got = (out / "checkpoints" / f"r{q:03d}" / PRM_FILE).read_bytes()
        assert got == (prm_run / "checkpoints" / f"r{q:03d}" / PRM_FILE).read_bytes()
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    "deleted",
    ["checkpoints/r001/" + PRM_FILE, "rounds/r002/" + LABELS_FILE, "rounds/r001/" + PRM_FILE],
)
def test_a_deleted_prm_file_is_named_and_its_round_redone(
    tmp_path: Path, prm_run: Path, deleted: str
) -> None:
    # Not silently replaced by a fresh PRM: the manifest knows which files each phase wrote.
    out = tmp_path / "run"
    shutil.copytree(prm_run, out)
    (out / deleted).unlink()
    p = _cli(out)
    assert p.returncode == 0, p.stderr
    assert f"{deleted}: missing" in p.stdout + p.stderr
    assert _records(out) == _records(prm_run)
    assert _results(out) == _results(prm_run)
    for q in (1, 2):
        got = (out / "checkpoints" / f"r{q:03d}" / PRM_FILE).read_bytes()
        assert got == (prm_run / "checkpoints" / f"r{q:03d}" / PRM_FILE).read_bytes()


# --- the PRM's step scores as dense rewards for GRPO -------------------------------------------


def _nested(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = json.loads(value) if isinstance(value, str) else value
    return out


def test_grpo_round_with_prm_dense_rewards(tmp_path: Path) -> None:
    overrides = _nested(LOOP) | {"rounds": 1, "seed": 0}
    # every group trains (no dynamic sampling): the dense rewards reach the update even when a
    # task's samples are all wrong
    overrides["strategy"] = {
        "algorithm": "grpo",
        "rl": {"dense_reward": "prm", "dynamic_sampling": False},
    }
    cfg = load_config("prm-cooperative", overrides=overrides)
    out = tmp_path / "run"
    summary = run(cfg, out, show_progress=False, log=lambda *_: None)
    train = summary["rounds"][1]["train"]
    assert train["steps"] == TRAIN_STEPS and train["groups_kept"] == train["groups"] > 0
    dense = train["rl_inputs"]["dense"]
    assert dense["steps_scored"] > 0 and dense["mean"] < 0  # p - 1 at each step's end

    # Rebuilt from the run's files: the same dense rewards, each the round's PRM score minus
    # one at the token closing its step, zero elsewhere.
    rd = RunDir(out)
    tasks = {t.id: t for t in _round_records(out, 1, "tasks.parquet", Task)}
    traces = _round_records(out, 1, "traces.parquet", Trace)
    judgements = _round_records(out, 1, "judgements.parquet", Judgement)
    policy = load_model(cfg.model, rd.checkpoint(0))  # the policy that sampled the round
    inputs = policy_gradient_inputs(cfg, rd, 1, tasks, traces, judgements, policy, 0)
    assert inputs.info["dense"] == pytest.approx(dense)
    assert inputs.dense is not None
    prm = ProcessRewardModel.load(rd.round_dir(1) / PRM_FILE, policy)
    tok = policy.tokenizer
    total = 0
    for g, rows in zip(inputs.groups, inputs.dense, strict=True):
        scores = prm.step_scores([g.prompt] * len(g.completions), g.completions)
        for c, row, s in zip(g.completions, rows, scores, strict=True):
            ends = step_end_tokens(tok, c)
            want = torch.zeros(len(row))
            for e, p in zip(ends, s, strict=False):  # the answer's score is left out
                want[e] = p - 1.0
            assert torch.allclose(row, want, atol=1e-6), c
            total += len(ends)
    assert total == dense["steps_scored"]


def test_dense_prm_scores_land_on_the_steps_the_prm_scored() -> None:
    # Step ends (where a dense reward lands) and the PRM's places are the same steps, also for
    # text a model should not write (a `#` inside a step, empty steps, no answer).
    tok = TinyModel.create(CFG, 0).tokenizer
    for c in ["6+6=12;12+0=13#13", "a;;b#c", "1#2#3", "1;2#", ";#5", "1;2;", "13", "x#"]:
        places = score_places(c)
        ends = step_end_tokens(tok, c)
        # one end per scored step, at the same character (one token per character here)
        assert ends == places[: len(ends)], c
        steps, answer = parse(c)
        if "#" in c:
            assert len(ends) == len(steps), c


def test_prm_config_needs_something_to_feed() -> None:
    # The PRM filters behaviour-cloning data, or rewards policy-gradient steps: not neither.
    with pytest.raises(ConfigError, match=r"process_reward_model\.enabled filters"):
        load_config("prm-cooperative", overrides={"strategy": {"algorithm": "grpo"}})
    for algorithm in ("grpo", "rloo", "ppo"):
        dense = {"algorithm": algorithm, "rl": {"dense_reward": "prm"}}
        cfg = load_config("prm-cooperative", overrides={"strategy": dense})
        assert cfg.evaluator.process_reward_model.enabled
    with pytest.raises(ConfigError, match=r"dense_reward 'prm' needs evaluator"):
        load_config("grpo-zero", overrides={"strategy": {"rl": {"dense_reward": "prm"}}})
