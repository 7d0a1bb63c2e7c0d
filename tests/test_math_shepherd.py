"""Math-Shepherd Monte-Carlo step labels and OmegaPRM's binary search: the pure parts by hand,
then the sampling part with a real tiny model that has learned the addition steps."""

from __future__ import annotations

import random

import pytest
import torch

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ModelConfig, TrainConfig
from reasonloop.evaluator.math_shepherd import (
    first_failure,
    label_traces,
    labels_from_first_error,
    mc_labels,
    solved_only,
    step_prefix,
)
from reasonloop.evaluator.process_reward_model import (
    ProcessRewardModel,
    calibration_report,
    train_prm,
)
from reasonloop.evaluator.step_corruption import with_corruptions
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.types import SFTExample, Trace


def test_mc_labels_by_hand() -> None:
    hard, soft = mc_labels(
        [[True, False, False, True], [False, False], [True], [False, True, True]]
    )
    assert hard == [1.0, 0.0, 1.0, 1.0]
    assert soft == [0.5, 0.0, 1.0, 2 / 3]
    with pytest.raises(ValueError, match="prefix 1 has no rollout"):
        mc_labels([[True], []])


def _scan(reaches, k: int) -> int | None:
    return next((i for i in range(k) if not reaches(i)), None)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13])
def test_binary_search_finds_the_scans_first_error_with_fewer_evaluations(k: int) -> None:
    for first in [*range(k), None]:  # every first error, and none (all correct)
        calls: list[int] = []

        def reaches(i: int, first: int | None = first, calls: list[int] = calls) -> bool:
            calls.append(i)
            return first is None or i < first

        found, asked = first_failure(reaches, k)
        assert found == first == _scan(lambda i, f=first: f is None or i < f, k)
        assert asked == calls  # it reports exactly what it evaluated
        # ceil(log2(k + 1)) evaluations at most, against the scan's k
        assert len(asked) <= (k + 1 - 1).bit_length()
        assert len(set(asked)) == len(asked)
        if k >= 3:
            assert len(asked) < k
        assert labels_from_first_error(k, found) == [
            1.0 if first is None or i < first else 0.0 for i in range(k)
        ]


def test_binary_search_edge_cases() -> None:
    # first step wrong: 0 found after log2 halvings, never asking beyond what is needed
    found, asked = first_failure(lambda i: False, 7)
    assert found == 0 and asked == [3, 1, 0]
    # all correct
    found, asked = first_failure(lambda i: True, 7)
    assert found is None and asked == [3, 5, 6]
    # no steps: nothing to ask
    assert first_failure(lambda i: True, 0) == (None, [])
    assert labels_from_first_error(4, 0) == [0.0, 0.0, 0.0, 0.0]
    assert labels_from_first_error(4, None) == [1.0, 1.0, 1.0, 1.0]


def test_solved_only_keeps_the_traces_of_tasks_some_sample_solved() -> None:
    traces = [Trace(f"{t}/{i}", t, "", [], None, "test") for t in "abc" for i in range(2)]
    verdicts = {"a/0": False, "a/1": True, "b/0": False, "b/1": False, "c/1": True}
    assert [t.id for t in solved_only(traces, verdicts)] == ["a/0", "a/1", "c/0", "c/1"]
    assert solved_only(traces, {}) == []


def test_step_prefix_ends_with_its_separator() -> None:
    steps = ["1+2+0=3", "4+5+0=9"]
    assert step_prefix(steps, 0) == "1+2+0=3;"
    assert step_prefix(steps, 1) == "1+2+0=3;4+5+0=9#"


# --- sampling with a real model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def learned() -> tuple[TinyModel, AdditionFamily]:
    """A tiny model trained on 2-digit step-by-step addition until its rollouts mostly work."""
    torch.manual_seed(0)
    fam = AdditionFamily(steps=True)
    rng = random.Random(0)
    tasks = [fam.make(rng, 2) for _ in range(600)]
    data = [SFTExample(t.prompt, fam.completion(t)) for t in tasks]
    model = TinyModel.create(
        ModelConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=48, threads=1), 0
    )
    train_sft(model, data, TrainConfig(lr=3e-3, steps=600, batch_size=32, warmup_steps=10), 0)
    return model, fam


def _traces(fam: AdditionFamily, n: int, seed: int):
    """Reference traces (right) and traces whose first step has a wrong carry-free total, so
    that no continuation of it can be right while the model's are otherwise good."""
    rng = random.Random(seed)
    tasks, traces, verdicts = {}, [], {}
    for i in range(n):
        t = fam.make(rng, 2)
        tasks[t.id] = t
        steps, answer = fam.reference(t)
        if i % 2:
            x, y, c, total = steps[0].replace("=", "+").split("+")
            steps = [f"{x}+{y}+{c}={(int(total) + 1) % 10}", *steps[1:]]
            answer = "9" + answer[1:] if answer[0] != "9" else "8" + answer[1:]
        text = fam.render(steps, answer)
        tr = Trace(f"tr{i}", t.id, text, steps, answer, "test")
        traces.append(tr)
        verdicts[tr.id] = fam.verify(t, answer) == 1.0
    return tasks, traces, verdicts


def test_rollout_labels_find_a_wrong_first_step_and_binary_search_is_cheaper(learned) -> None:
    model, fam = learned
    tasks, traces, verdicts = _traces(fam, 12, 1)
    full = label_traces(model, fam, tasks, traces, verdicts, 4, 0, 24)
    again = label_traces(model, fam, tasks, traces, verdicts, 4, 0, 24)
    assert [x.soft for x in full.labels] == [x.soft for x in again.labels]  # seeded
    binary = label_traces(model, fam, tasks, traces, verdicts, 4, 0, 24, binary_search=True)
    assert full.rollouts == 4 * full.steps == 4 * sum(len(t.steps) for t in traces)
    assert binary.rollouts < full.rollouts
    assert binary.cost()["rollouts_per_step"] < full.cost()["rollouts_per_step"] == 4.0
    for x, tr in zip(full.labels, traces, strict=True):
        assert len(x.hard) == len(x.soft) == len(tr.steps) + 1
        assert x.hard[-1] == x.soft[-1] == float(verdicts[tr.id])
        assert all(h == (1.0 if s > 0 else 0.0) for h, s in zip(x.hard, x.soft, strict=True))
    wrong = [i for i, t in enumerate(traces) if not verdicts[t.id]]
    right = [i for i, t in enumerate(traces) if verdicts[t.id]]
    # A first step with a wrong column total cannot lead to the gold sum.
    assert all(full.labels[i].hard[0] == 0.0 and full.labels[i].first_error == 0 for i in wrong)
    assert all(binary.labels[i].first_error == 0 for i in wrong)
    # Right prefixes: the learned model completes most of them correctly.
    mean_right = sum(full.labels[i].soft[0] for i in right) / len(right)
    assert mean_right > 0.5, mean_right
    assert all(binary.labels[i].hard == [1.0] * (len(traces[i].steps) + 1) for i in right)


def test_a_prm_on_its_policys_labels_locates_injected_errors_with_its_surprise_term(
    learned,
) -> None:
    # The whole recipe, real parts only: hot samples of the policy, kept where some sample
    # solved the task, binary-search labels from the policy's rollouts, a PRM copied from the
    # policy; then held-out references with one wrong digit injected. A 2-step trace: a guess
    # is right half the time, which the plain head stays near (measured 0.52, surprise 0.97).
    model, fam = learned
    rng = random.Random(1)
    train = {t.id: t for t in (fam.make(rng, 2) for _ in range(300))}
    comps = model.generate(
        [t.prompt for t in train.values()], 4, Sampling(1.5, max_new_tokens=40, seed=1)
    )
    traces, verdicts = [], {}
    for t, cs in zip(train.values(), comps, strict=True):
        for i, c in enumerate(cs):
            steps, answer = fam.parse(c.text)
            tr = Trace(f"{t.id}/{i}", t.id, c.text, steps, answer, "test")
            traces.append(tr)
            verdicts[tr.id] = fam.verify(t, answer) == 1.0
    assert 0.2 < sum(verdicts.values()) / len(verdicts) < 0.9  # hot: errors to learn from
    pool = list({(t.task_id, t.text): t for t in solved_only(traces, verdicts)}.values())
    labels = {
        x.trace_id: x.hard
        for x in label_traces(
            model, fam, train, pool, verdicts, 8, 2, 40, binary_search=True
        ).labels
    }
    held_rng = random.Random(2)
    held = {t.id: t for t in (fam.make(held_rng, 2) for _ in range(300)) if t.id not in train}
    prompts = [train[t.task_id].prompt for t in pool]
    texts = [t.text for t in pool]
    ys = [labels[t.id] for t in pool]
    located = {}
    for surprise, corruptions in ((True, 0.0), (False, 0.0), (False, 1.0)):
        torch.manual_seed(0)
        prm = ProcessRewardModel.from_policy(model)
        cfg = TrainConfig(lr=1e-3, steps=200, batch_size=32, warmup_steps=10)
        p, c, y, added = with_corruptions(prompts, texts, ys, corruptions, random.Random(3))
        assert (added > 0) == (corruptions > 0)
        info = train_prm(prm, p, c, y, cfg, 0, balance=True, surprise=surprise)
        assert (info["surprise_weight"] > 0) == surprise
        report = calibration_report(prm, fam, held, [], {}, "min", injected=200, seed=5)
        assert report["first_error_chance_injected"] == 0.5
        located[surprise, corruptions] = report["first_error_accuracy_injected"]
    assert located[True, 0.0] > 0.8, located
    assert located[False, 0.0] < located[True, 0.0] - 0.2, located
    # Without the surprise term, corrupted copies of the good steps teach the plain head what
    # rollouts cannot (measured 0.705 against 0.515).
    assert located[False, 1.0] > located[False, 0.0] + 0.1, located
