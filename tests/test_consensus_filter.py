"""Majority-vote consensus and the Post-Processor's keep/drop reasons."""

from __future__ import annotations

import random
from collections import Counter

from reasonloop.config import CreatorConfig, PostProcessConfig
from reasonloop.evaluator.consensus import judge_consensus, majority_vote
from reasonloop.postprocess.filter import process
from reasonloop.tasks import creator
from reasonloop.tasks.base import Family
from reasonloop.types import Task, Trace


def test_majority_vote():
    assert majority_vote(["5", "5", "6", None]) == ("5", 0.5)
    assert majority_vote([None, None]) == (None, 0.0)
    assert majority_vote([]) == (None, 0.0)
    # A tie goes to the answer seen first, deterministically.
    assert majority_vote(["7", "8", "8", "7"]) == ("7", 0.5)


def _tr(i: str, task: str, text: str, answer: str | None) -> Trace:
    return Trace(i, task, text, [], answer, "m")


def test_consensus_judges_without_gold():
    traces = [
        _tr("a", "t", "9", "9"),
        _tr("b", "t", "9", "9"),
        _tr("c", "t", "8", "8"),
        _tr("d", "u", "1", "1"),
        _tr("e", "u", "2", "2"),
    ]
    js = {j.trace_id: j for j in judge_consensus(traces, 1, min_share=0.6)}
    assert js["a"].verdict and js["b"].verdict and not js["c"].verdict
    assert abs(js["c"].scores[0] - 1 / 3) < 1e-9
    # 50% share is under the 60% bar: nothing from task u is trusted.
    assert not js["d"].verdict and not js["e"].verdict


class Digits(Family):
    name = "digits"
    levels = (1, 2, 3)

    def make(self, rng, level):
        x = rng.randrange(10 ** (level - 1), 10**level)
        return self.task(f"{x}=", str(x), level, {})

    def reference(self, task):
        return [], task.answer

    def check_step(self, task, step):
        return step != "bad"


def test_filter_reasons():
    fam = Digits()
    t = Task("t", "digits", "5=", "5")
    tasks = {"t": t}
    traces = [
        Trace("1", "t", "5", [], "5", "m"),
        Trace("2", "t", "5", [], "5", "m"),  # duplicate of 1
        Trace("3", "t", "x#6", ["x"], "6", "m"),  # judged wrong
        Trace("4", "t", "", [], None, "m"),  # no answer
        Trace("5", "t", "bad#5", ["bad"], "5", "m"),  # a step the family rejects
        Trace("6", "t", "ok#5", ["ok"], "5", "m"),
        Trace("7", "t", "y" * 50 + "#5", ["y" * 50], "5", "m"),  # too long
    ]
    from reasonloop.evaluator.gold import judge_gold

    js = judge_gold(fam, tasks, traces, 0)
    ds = process(tasks, traces, js, PostProcessConfig(max_chars=20), fam, 0)
    assert [d.reason for d in ds] == [
        "kept",
        "duplicate",
        "judged wrong",
        "no answer",
        "bad step",
        "kept",
        "too long",
    ]
    ds = process(tasks, traces, js, PostProcessConfig(keep="first-correct", max_chars=20), fam, 0)
    assert [d.kept for d in ds] == [True, False, False, False, False, False, False]
    assert ds[5].reason == "over per-task cap"


def test_creator_frontier_and_exclusion():
    fam = Digits()
    cfg = CreatorConfig(mastery=0.5, step=1, levels_ahead=2, review_share=0.25)
    levels = creator.frontier_levels(fam, 2, cfg)
    assert levels == [2, 3]
    rng = random.Random(0)
    held = {fam.make(random.Random(1), 2).id}
    tasks = creator.propose(fam, rng, 40, levels, [1], cfg, exclude=held, rnd=3)
    assert not held & {t.id for t in tasks}
    assert len({t.id for t in tasks}) == len(tasks)
    assert all(t.round == 3 for t in tasks)
    assert {t.difficulty for t in tasks} <= {1, 2, 3} and any(t.difficulty == 1 for t in tasks)
    assert creator.next_frontier(2, 0.49, cfg, fam) == 2
    assert creator.next_frontier(2, 0.5, cfg, fam) == 3
    assert creator.next_frontier(3, 0.9, cfg, fam) == 3  # capped at the family's hardest level


def test_balance_levels_repeats_small_levels():
    from reasonloop.algorithms.behaviour_cloning import balance_levels
    from reasonloop.types import SFTExample

    tasks = {f"a{i}": Task(f"a{i}", "f", f"{i}=", str(i), 1) for i in range(3)}
    tasks |= {f"b{i}": Task(f"b{i}", "f", f"1{i}=", str(i), 2) for i in range(10)}
    exs = [SFTExample(t.prompt, t.answer, task_id=t.id) for t in tasks.values()]
    out = balance_levels(exs, tasks, per_level=8)
    levels = Counter(tasks[e.task_id].difficulty for e in out)
    assert levels == {1: 8, 2: 10}  # level 2 already has more than 8: left alone
    assert Counter(e.task_id for e in out if tasks[e.task_id].difficulty == 1) == {
        "a0": 3,
        "a1": 3,
        "a2": 2,
    }


def test_heldout_leaves_small_levels_partly_to_training():
    from reasonloop.config import TasksConfig
    from reasonloop.loop.heldout import make_heldout

    held = make_heldout(Digits(), TasksConfig(heldout_levels=[1, 2], heldout_per_level=10))
    by_level = Counter(t.difficulty for t in held)
    assert by_level[2] == 10  # 90 distinct 2-digit tasks: plenty
    assert by_level[1] == 4  # only 9 distinct 1-digit tasks: half are held out, half trainable
    assert all(t.split == "heldout" for t in held)
    assert held == make_heldout(Digits(), TasksConfig(heldout_levels=[1, 2], heldout_per_level=10))
