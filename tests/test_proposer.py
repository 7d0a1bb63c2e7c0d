"""The learned task proposer (Absolute-Zero-style self-play): its reward, its parser of untrusted
completions, the sandbox verification of what it writes, the proposer's own training examples,
and a real short self-play run that is killed and resumed."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from small_run import nested

from reasonloop.config import (
    SELF_PLAY_FAMILIES,
    ConfigError,
    ModelConfig,
    ProposerConfig,
    load_config,
)
from reasonloop.loop.creation import self_play_tasks
from reasonloop.loop.run import _adaptive_frontier
from reasonloop.loop.run import run as run_loop
from reasonloop.loop.store import read_records
from reasonloop.models import build_model
from reasonloop.tasks import creator, programs, proposer
from reasonloop.tasks.curriculum import choose_level
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.tasks.families.program import ProgramFamily
from reasonloop.tasks.registry import FAMILIES, get_family
from reasonloop.tasks.reliability import RejectedTask, execution_check
from reasonloop.types import Judgement, Level, SFTExample, Task, Trace

# -- by hand -----------------------------------------------------------------------------------


def test_learnability_rewards_only_tasks_the_solver_sometimes_solves():
    assert proposer.learnability(0.0) == 0.0  # never solved: nothing to learn from it
    assert proposer.learnability(1.0) == 0.0  # always solved: too easy
    assert proposer.learnability(0.25) == pytest.approx(0.75)
    assert proposer.learnability(0.5) == pytest.approx(0.5)
    assert proposer.learnability(0.9) == pytest.approx(0.1)
    for bad in (-0.01, 1.01, math.nan):
        with pytest.raises(ValueError, match="solve rate must be in"):
            proposer.learnability(bad)


def test_parse_proposal_takes_the_first_stripped_line_of_untrusted_text():
    for not_text in (None, 12, b"1+2", ["1+2"]):
        assert proposer.parse_proposal(not_text) == ""
    assert proposer.parse_proposal("") == ""
    assert proposer.parse_proposal("   \t ") == ""
    assert proposer.parse_proposal("  3+4*2 \t") == "3+4*2"
    assert proposer.parse_proposal("3+4\nimport os\n") == "3+4"
    assert proposer.parse_proposal("7*8\r\n9") == "7*8"
    assert proposer.parse_proposal("\n1+2") == ""  # the first line is empty: no program
    assert proposer.proposer_prompt(3) == "?L3:"


def _trace(tid: str, task: str, hint: bool = False) -> Trace:
    return Trace(tid, task, "", [], None, "reasoner:r0", {"hint": True} if hint else {})


def _verdict(tid: str, ok: bool, level: Level = "outcome") -> Judgement:
    return Judgement(tid, "gold", level, [float(ok)], verdict=ok)


def test_solve_rates_count_unhinted_outcome_verdicts_per_task():
    traces = [
        _trace("a1", "A"),
        _trace("a2", "A"),
        _trace("a3", "A"),
        _trace("a4", "A", hint=True),  # a rationalisation saw the answer: not a solve
        _trace("b1", "B"),
        _trace("b2", "B"),  # judged at step level only
        _trace("c1", "C"),  # never judged
        _trace("d1", "D"),
        # A correction of b1 saw the wrong first attempt: not a solve either.
        Trace("b3", "B", "", [], None, "reasoner:r0", {}, parent="b1"),
    ]
    judgements = [
        _verdict("a1", True),
        _verdict("a2", False),
        _verdict("a3", True),
        _verdict("a4", True),
        _verdict("b1", False),
        _verdict("b2", True, level="step"),
        _verdict("d1", True),
        _verdict("b3", True),
        _verdict("zz", True),  # a judgement of no trace here
    ]
    rates = proposer.solve_rates(traces, judgements)
    assert rates.keys() == {"A", "B", "D"}
    assert rates["A"] == pytest.approx(2 / 3)
    assert rates["B"] == 0.0 and rates["D"] == 1.0


def _proposed(fam: ProgramFamily, text: str, value: str, asked: int, by: str) -> Task:
    t = fam.from_program(text, value)
    t.made_by, t.round = by, 2
    t.params["asked_level"] = asked
    return t


def test_proposer_examples_keep_rewarded_proposals_relabelled_to_their_measured_ops():
    fam = ProgramFamily()
    half = _proposed(fam, "3+4*2", "11", 5, "proposer:r1")  # asked 5 operations, wrote 2
    mostly = _proposed(fam, "(1+2)*3-4", "5", 1, "proposer:r1")  # asked 1, wrote 3
    easy = _proposed(fam, "1+1", "2", 1, "proposer:r1")
    hard = _proposed(fam, "9*9*9", "729", 3, "proposer:r1")
    unseen = _proposed(fam, "2*2", "4", 1, "proposer:r1")  # no solve rate measured
    generator = _proposed(fam, "5-3", "2", 1, "program@generator")  # not the proposer's
    tasks = [half, mostly, easy, hard, unseen, generator]
    rates = {half.id: 0.5, mostly.id: 0.75, easy.id: 1.0, hard.id: 0.0, generator.id: 0.5}

    examples, info = proposer.proposer_examples(tasks, rates, 0.0, 2)
    assert [(e.prompt, e.completion, e.task_id, e.round) for e in examples] == [
        ("?L2:", "3+4*2", half.id, 2),
        ("?L3:", "(1+2)*3-4", mostly.id, 2),
    ]
    assert info == {
        "proposals_solved_by_all": 1,
        "proposals_solved_by_none": 1,
        "reward_mean": pytest.approx((0.5 + 0.25 + 0 + 0) / 4),
        "trained": 2,
    }
    # A higher bar keeps only the proposal with reward 0.5.
    examples, info = proposer.proposer_examples(tasks, rates, 0.3, 2)
    assert [e.task_id for e in examples] == [half.id] and info["trained"] == 1
    assert proposer.proposer_examples([generator], rates, 0.0, 2)[1]["reward_mean"] is None


def test_difficulty_stats_on_hand_built_tasks():
    fam = ProgramFamily()
    tasks = [
        fam.from_program("1+2", "3"),
        fam.from_program("3*4-5", "7"),
        fam.from_program("2**3%5", "3"),  # `**` is not also a `*`
        fam.from_program("7//-2", "-4"),  # a unary minus is not a `-`
    ]
    assert proposer.difficulty_stats(tasks) == {
        "difficulty_mean": 1.5,
        "difficulty_hist": {"1": 2, "2": 2},
        "operators": {"%": 1, "*": 1, "**": 1, "+": 1, "-": 1, "//": 1},
    }
    assert proposer.difficulty_stats([]) == {
        "difficulty_mean": None,
        "difficulty_hist": {},
        "operators": {},
    }


def test_seed_examples_teach_the_prompt_format_at_every_level():
    fam = ProgramFamily()
    examples = proposer.seed_examples(fam, random.Random(0), 7, [1, 2, 3], rnd=0)
    assert [e.prompt for e in examples] == ["?L1:", "?L2:", "?L3:"] * 2 + ["?L1:"]
    for e in examples:
        assert programs.check_program(e.completion) is None
        assert e.prompt == f"?L{programs.operation_count(e.completion)}:"
    again = proposer.seed_examples(fam, random.Random(0), 7, [1, 2, 3], rnd=0)
    assert again == examples


def test_sample_proposals_asks_each_level_in_turn_and_repeats_with_its_seed():
    model = build_model(ModelConfig(dim=32, n_layers=1, n_heads=2, threads=1), seed=0)
    cfg = ProposerConfig(proposals=5, max_new_tokens=6, temperature=1.0)
    got = proposer.sample_proposals(model, [3, 4], cfg, seed=11, batch_size=2)
    # Interleaved, so a round that keeps only the first verified ones keeps both levels alike.
    assert [level for level, _ in got] == [3, 4, 3, 4, 3]
    assert all(isinstance(p, str) and "\n" not in p and p == p.strip() for _, p in got)
    assert proposer.sample_proposals(model, [3, 4], cfg, seed=11, batch_size=2) == got
    # Each level's texts are its own prompt's samples, in the order they were drawn.
    alone = proposer.sample_proposals(
        model, [3], ProposerConfig(proposals=3, max_new_tokens=6), 11, 2
    )
    assert [p for lv, p in got if lv == 3] == [p for _, p in alone]


# -- through the real sandbox ----------------------------------------------------------------


def test_verify_proposals_keeps_sandbox_verified_programs_and_names_every_rejection():
    fam = ProgramFamily()
    held = fam.from_program("8-1", "7")
    proposals = [
        (2, "3+4*2"),
        (1, "-(2+3)"),  # unary minus on top: the answer is not the last step's
        (3, " 7 % 3 "),
        (1, "1+(2"),
        (1, "__import__('os')"),
        (1, "(1).real"),
        (1, "1//0"),
        (2, "10**12"),
        (1, "1+" * 30 + "1"),
        (2, "3 + 4*2"),  # the first one again, spaced differently
        (1, "8-1"),  # a held-out task
        (1, "5"),  # no operation: its answer is its own text
        (1, "-(7)"),
        (2, "6*7"),  # valid, but the round is full
    ]
    tasks, rejects, info = proposer.verify_proposals(fam, proposals, 3, {held.id}, 2, "proposer:r1")

    assert [(t.prompt, t.answer) for t in tasks] == [
        ("3+4*2=", "11"),
        ("-(2+3)=", "-5"),
        ("7%3=", "1"),
    ]
    assert execution_check(tasks) == {}  # the sandbox, asked again, gives the same values
    for t, asked in zip(tasks, [2, 1, 3], strict=True):
        assert t.made_by.startswith(proposer.PROPOSER_MARK) and t.made_by == "proposer:r1"
        assert t.round == 2 and t.family == "program"
        assert t.params["asked_level"] == asked
        assert t.params["program"] == t.prompt[:-1]
        assert t.params["ops"] == t.difficulty == programs.operation_count(t.prompt[:-1])
        assert fam.solve(t)[1] == t.answer  # the reference trace reaches the sandbox's value

    why = {r.prompt: (r.reason, r.detail) for r in rejects}
    assert len(why) == len(rejects) == len(proposals) - 3
    assert why["1+(2="] == ("invalid_program", "not a Python expression")
    assert why["__import__('os')="][0] == "invalid_program"
    assert "outside the grammar" in why["__import__('os')="][1]
    assert why["(1).real="][0] == "invalid_program"
    assert "outside the grammar" in why["(1).real="][1]
    assert why["1//0="][0] == "sandbox_error" and "ZeroDivisionError" in why["1//0="][1]
    assert why["10**12="][0] == "too_large"
    assert why["1+" * 30 + "1="][0] == "invalid_program"
    assert "longer than" in why["1+" * 30 + "1="][1]
    assert why["8-1="][0] == "heldout"
    assert why["5="][0] == why["-(7)="][0] == "trivial"
    assert why["6*7="][0] == "over_limit"
    dup = next(r for r in rejects if r.reason == "duplicate")
    assert dup.task_id == tasks[0].id  # one task, however the program was spaced
    assert all(r.made_by == "proposer:r1" and r.round == 2 for r in rejects)

    assert info["proposals"] == 14 and info["kept"] == 3
    # Verified: ran, is a task (not trivial) and agreed with the steps, whether kept or turned
    # away afterwards.
    assert info["verified"] == 6 and info["verified_share"] == round(6 / 14, 4)
    assert info["rejected"] == {
        "duplicate": 1,
        "heldout": 1,
        "invalid_program": 4,
        "over_limit": 1,
        "sandbox_error": 1,
        "too_large": 1,
        "trivial": 2,
    }
    assert info["difficulty_hist"] == {"1": 2, "2": 1}
    assert info["operators"] == {"%": 1, "*": 1, "+": 2}
    assert info["difficulty_asked_mean"] == round(20 / 14, 3)  # asked operations / proposals


def test_addition_proposals_become_sums_in_the_family_format_and_others_are_named():
    fam = AdditionFamily(pad_carry=True)
    held = fam.from_operands(12, 34, 2)
    proposals = [
        (3, "58+123"),  # the longer operand sets the level
        (7, "4821907 + 3300126"),
        (2, "12+34"),  # a held-out task
        (1, "3*4"),  # a program, but not a sum
        (1, "5"),
        (1, "1+2+3"),
        (12, "99999999999+99999999999"),  # beyond the program family's bound, inside ours
        (2, "(1+2)"),  # parenthesised: not the family's form
        (3, "123+58"),  # another task than 58+123: the operands' order is the prompt's
    ]
    tasks, rejects, info = proposer.verify_proposals(
        fam, proposals, 10, {held.id}, 1, "proposer:r0"
    )
    assert [(t.prompt, t.answer, t.difficulty, t.params["program"]) for t in tasks] == [
        ("8500+3210=", "1810", 3, "58+123"),
        ("70912840+62100330=", "33022180", 7, "4821907+3300126"),
        ("999999999990+999999999990=", "899999999991", 11, "99999999999+99999999999"),
        ("3210+8500=", "1810", 3, "123+58"),
    ]
    for t in tasks:  # the same tasks the generator would have made
        a, b = (int(x) for x in t.params["program"].split("+"))
        assert t.id == fam.from_operands(a, b, t.difficulty).id
        assert fam.verify(t, fam.reference(t)[1]) == 1.0
    why = {r.prompt: r.reason for r in rejects}
    assert why == {
        "210+430=": "heldout",  # the task, in the family format
        "3*4=": "off_family",
        "5=": "off_family",
        "1+2+3=": "off_family",
        "(1+2)=": "off_family",
    }
    assert info["difficulty_hist"] == {"3": 2, "7": 1, "11": 1}
    # The program family's bound rejects the 12-digit answer; addition's own does not.
    assert programs.gold_answer(programs.ProgramResult("ok", "199999999998", "ran"))[1] == (
        "too_large"
    )
    with pytest.raises(programs.ProgramRejected, match="reference_mismatch: the sum is 3"):
        fam.task_from_proposal("1+2", "4")
    with pytest.raises(programs.ProgramRejected, match="too_large"):
        fam.task_from_proposal("1" * 21 + "+1", str(int("1" * 21) + 1))
    examples = proposer.seed_examples(fam, random.Random(0), 6, [1, 5, 9], rnd=0)
    assert [e.prompt for e in examples] == ["?L1:", "?L5:", "?L9:"] * 2
    for e in examples:
        a, b = e.completion.split("+")
        assert (
            max(len(a), len(b)) == int(e.prompt[2:-1])
            and programs.check_program(e.completion) is None
        )


def test_self_play_tasks_need_a_family_the_proposer_writes_programs_for():
    cfg = load_config("self-play")
    model = build_model(ModelConfig(dim=32, n_layers=1, n_heads=2, threads=1), seed=0)
    with pytest.raises(ValueError, match="tasks.family: program or addition.*'sorting'"):
        self_play_tasks(cfg, get_family("sorting"), model, [3], set(), random.Random(0), 0, 1)
    # The config checks names (it cannot build families); they must be the Proposable ones.
    proposable = {n for n in FAMILIES if isinstance(get_family(n), proposer.Proposable)}
    assert proposable == set(SELF_PLAY_FAMILIES)


def test_config_errors_name_the_field():
    with pytest.raises(
        ConfigError, match="needs tasks.family: program or addition.*got tasks.family 'sorting'"
    ):
        load_config("self-play", None, {"tasks": {"family": "sorting"}})
    assert load_config("self-play", None, {"tasks": {"family": "addition"}}).tasks.family == (
        "addition"
    )
    with pytest.raises(ConfigError, match="strategy.algorithm must be .* got 'grpo'"):
        load_config("self-play", None, {"strategy": {"algorithm": "grpo"}})
    with pytest.raises(ConfigError, match="min_reward"):
        load_config("self-play", None, {"creator": {"proposer": {"min_reward": 1.0}}})


# -- a real short self-play run --------------------------------------------------------------

# The tiniest sizes that still teach the proposer its format in round 0 (some proposals verify);
# `min_tasks` above `per_round` makes every round top up with generator tasks too.
SIZES: dict = {
    "rounds": 2,
    "seed": 3,
    "model.dim": 32,
    "model.n_layers": 2,
    "model.n_heads": 2,
    "model.threads": 1,
    "seed_train.steps": 150,
    "train.steps": 4,
    "train.batch_size": 16,
    "tasks.seed_examples": 64,
    "tasks.heldout_per_level": 4,
    "tasks.seed_levels": [1, 2],
    "tasks.heldout_levels": [1, 2, 3],
    "creator.per_round": 8,
    "creator.proposer.proposals": 32,
    "creator.proposer.seed_examples": 64,
    "creator.proposer.min_tasks": 10,
    "creator.min_trials": 1,  # every measured level counts, so round 2's choice is a real one
    "reasoner.samples": 2,
    "reasoner.batch_size": 32,
}


def _cli(out: Path) -> list[str]:
    sets = [
        a for k, v in SIZES.items() if k not in ("rounds", "seed") for a in ("--set", f"{k}={v}")
    ]
    return [
        sys.executable,
        "-m",
        "reasonloop.cli",
        "run",
        "--preset",
        "self-play",
        "--out",
        str(out),
        "--quiet",
        "--rounds",
        str(SIZES["rounds"]),
        "--seed",
        str(SIZES["seed"]),
        *sets,
    ]


def _records(out: Path) -> dict[str, list[dict]]:
    files = sorted((out / "rounds").rglob("*.parquet")) + [out / "heldout.parquet"]
    return {str(f.relative_to(out)): pq.read_table(f).to_pylist() for f in files}


@pytest.fixture(scope="module")
def self_play_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("self-play") / "run"
    cfg = load_config("self-play", None, nested(SIZES))
    summary = run_loop(cfg, out, show_progress=False, log=lambda _: None)
    assert summary["complete"]
    return out


def test_self_play_rounds_train_on_verified_proposals_and_record_rejections(self_play_run):
    out = self_play_run
    summary = json.loads((out / "summary.json").read_text())
    rounds = {m["round"]: m for m in summary["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    held = {t["id"] for t in pq.read_table(out / "heldout.parquet").to_pylist()}
    fam = ProgramFamily()

    # Round 0 teaches the proposer its format: generator programs behind `?L<ops>:` prompts.
    seed_sft = read_records(out / "rounds/r000/sft.parquet", SFTExample)
    seeds = [e for e in seed_sft if e.prompt.startswith("?L")]
    assert len(seeds) == SIZES["creator.proposer.seed_examples"]
    # Every level up to the hardest held-out one, not the family's far levels.
    top = max(SIZES["tasks.heldout_levels"])
    assert {e.prompt for e in seeds} == {f"?L{lv}:" for lv in fam.levels if lv <= top}
    assert all(e.prompt == f"?L{programs.operation_count(e.completion)}:" for e in seeds)
    assert rounds[0]["proposer"] == {"trained": len(seeds)}
    assert "self_play" not in rounds[0]  # the seed round proposes nothing itself

    verified = proposed_kept = 0
    for r in (1, 2):
        d = out / "rounds" / f"r{r:03d}"
        sp, rel = rounds[r]["self_play"], rounds[r]["reliability"]
        tasks = read_records(d / "tasks.parquet", Task)
        rejects = read_records(d / "rejected_tasks.parquet", RejectedTask)
        by = Counter("proposer" if t.made_by == f"proposer:r{r - 1}" else t.made_by for t in tasks)
        assert set(by) <= {"proposer", "program@generator"}  # proposed, or a top-up
        # The reliability filter sees every proposed and filled task; what it passes is the round.
        assert rel["checked"] == sp["kept"] + sp["filled"] == SIZES["creator.proposer.min_tasks"]
        assert len(tasks) == rel["kept"] and sp["filled"] > 0
        assert sp["kept"] <= SIZES["creator.per_round"]
        assert all(t.round == r for t in tasks) and not held & {t.id for t in tasks}
        assert execution_check(tasks) == {}
        for t in tasks:
            if t.made_by.startswith(proposer.PROPOSER_MARK):
                assert t.answer == fam.solve(t)[1] and "asked_level" in t.params

        # Every rejection has a reason; their counts are the proposer's plus the filter's.
        assert all(x.reason for x in rejects)
        assert Counter(x.reason for x in rejects) == Counter(sp["rejected"]) + Counter(
            rel["rejected"]
        )
        assert sum(sp["rejected"].values()) + sp["kept"] == sp["proposals"] == 32
        assert 0.0 <= sp["verified_share"] <= 1.0
        assert sp["verified_share"] == round(sp["verified"] / sp["proposals"], 4)
        assert sum(sp["difficulty_hist"].values()) == sp["kept"]
        assert {
            "difficulty_mean",
            "operators",
            "proposal_distinct",
            "proposal_jaccard_distance",
        } <= sp.keys()
        assert sp["levels_asked"] == rounds[r]["levels"]
        verified += sp["verified"]
        proposed_kept += by["proposer"]

        # The proposer trains on its proposals the solver solved sometimes, relabelled.
        sft = read_records(d / "sft.parquet", SFTExample)
        mine = [e for e in sft if e.prompt.startswith("?L")]
        traces = read_records(d / "traces.parquet", Trace)
        judged = read_records(d / "judgements.parquet", Judgement)
        rates = proposer.solve_rates(traces, judged)
        by_id = {t.id: t for t in tasks}
        assert len(mine) == rounds[r]["proposer"]["trained"]
        for e in mine:
            t = by_id[e.task_id]
            assert t.made_by.startswith(proposer.PROPOSER_MARK)
            assert 0.0 < rates[t.id] < 1.0
            assert e.prompt == f"?L{t.params['ops']}:" and e.completion == t.params["program"]
        proposed = [t for t in tasks if t.made_by.startswith(proposer.PROPOSER_MARK)]
        assert rounds[r]["proposer"]["proposals_solved_by_none"] == sum(
            rates[t.id] == 0.0 for t in proposed
        )
    # The proposer learned to write runnable programs, and some of them are trained on.
    assert verified > 0 and proposed_kept > 0


def test_a_level_measured_on_a_handful_of_samples_does_not_steer_the_curriculum():
    """Two stray 2-operation proposals (8 samples, p = 0.5) beside hundreds of samples at the
    asked levels: with `min_trials` they are ignored and the level asked follows the well
    measured ones."""
    fam = ProgramFamily()
    manifest = {
        "rounds": {
            "1": {"phases": {"process": {"success_by_level": {"3": [90, 100], "4": [9, 100]}}}},
            "2": {
                "phases": {
                    "process": {"success_by_level": {"2": [4, 8], "3": [70, 100], "4": [30, 100]}}
                }
            },
        }
    }
    loose = load_config("self-play", None, {"creator": {"min_trials": 1}})
    level, info = _adaptive_frontier(loose, fam, manifest, 3, 3)
    assert level == 2 and info["success"]["2"] == 0.5
    strict = load_config("self-play", None, {"creator": {"min_trials": 64}})
    level, info = _adaptive_frontier(strict, fam, manifest, 3, 3)
    assert level == 4 and info["success"] == {"3": 0.7, "4": 0.3}  # ties go to the harder
    # Only round 1 so far, and nothing in it measured enough: the frontier's level.
    thin = {"rounds": {"1": {"phases": {"process": {"success_by_level": {"3": [3, 8]}}}}}}
    level, info = _adaptive_frontier(strict, fam, thin, 2, 3)
    assert level == 3 and info["why"].startswith("no success measured")


def test_self_play_asks_where_the_solver_was_measured_most_learnable(self_play_run):
    """Round 1 has no sampled success yet (round 0 trains on gold traces): it asks at the
    frontier. Round 2 asks at the level that round 1's per-sample success says, recounted here
    from the stored traces and verdicts, the adaptive curriculum would pick, and the one above.
    No kept task is trivial (no operation); the trivial proposals are rejected as such."""
    out = self_play_run
    cfg = load_config("self-play", None, nested(SIZES))
    fam = ProgramFamily()
    rounds = {m["round"]: m for m in json.loads((out / "summary.json").read_text())["rounds"]}
    start = cfg.creator.start_level
    first = start if start is not None else max(SIZES["tasks.seed_levels"]) + 1
    assert rounds[1]["curriculum"]["why"].startswith("no success measured")
    assert rounds[1]["levels"] == creator.frontier_levels(fam, first, cfg.creator)

    d = out / "rounds/r001"
    level_of = {t.id: t.difficulty for t in read_records(d / "tasks.parquet", Task)}
    verdict = {j.trace_id: j.verdict for j in read_records(d / "judgements.parquet", Judgement)}
    table: dict[int, tuple[int, int]] = {}
    for t in read_records(d / "traces.parquet", Trace):
        ok, n = table.get(level_of[t.task_id], (0, 0))
        table[level_of[t.task_id]] = (ok + bool(verdict[t.id]), n + 1)
    table = {lv: c for lv, c in table.items() if c[1] >= cfg.creator.min_trials}
    level, why = choose_level(list(fam.levels), table, cfg.creator.target_band, first)
    assert rounds[2]["curriculum"]["level"] == level and rounds[2]["curriculum"]["why"] == why
    assert rounds[2]["levels"] == rounds[2]["self_play"]["levels_asked"]
    assert rounds[2]["levels"] == creator.frontier_levels(fam, level, cfg.creator)

    for r in (1, 2):
        d = out / "rounds" / f"r{r:03d}"
        tasks = read_records(d / "tasks.parquet", Task)
        assert all(programs.operation_count(t.params["program"]) > 0 for t in tasks)
        for x in read_records(d / "rejected_tasks.parquet", RejectedTask):
            if x.reason == "trivial":
                assert programs.operation_count(x.prompt[:-1]) == 0


def test_killed_self_play_run_resumes_to_identical_records(tmp_path, self_play_run):
    """Two real kills: a SIGKILL from outside as soon as round 1's rejections land (inside the
    propose phase or just after it), and the fault point inside round 1's training, after the
    proposer's examples were written. The same command then finishes the run."""
    env = {k: v for k, v in os.environ.items() if k != "REASONLOOP_FAULT"}
    out = tmp_path / "run"
    p = subprocess.Popen(_cli(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = out / "rounds/r001/rejected_tasks.parquet"
    deadline = time.monotonic() + 300
    while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    _, err = p.communicate()
    assert p.returncode == -9, err.decode()[-500:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert "train" not in manifest["rounds"].get("1", {}).get("phases", {})  # died in round 1

    # Round 0 is finished, so this run's optimiser steps are round 1's: die two steps in.
    fault = "train:2"
    p2 = subprocess.run(
        _cli(out), env=env | {"REASONLOOP_FAULT": fault}, capture_output=True, text=True
    )
    assert p2.returncode == -9, p2.stderr[-500:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert "process" in manifest["rounds"]["1"]["phases"]
    assert "train" not in manifest["rounds"]["1"]["phases"]

    p3 = subprocess.run(_cli(out), env=env, capture_output=True, text=True)
    assert p3.returncode == 0, p3.stderr[-2000:]
    assert _records(out) == _records(self_play_run)
    a = json.loads((out / "summary.json").read_text())["rounds"]
    b = json.loads((self_play_run / "summary.json").read_text())["rounds"]
    for key in ("self_play", "proposer", "heldout", "data"):
        assert [m.get(key) for m in a] == [m.get(key) for m in b]
    assert not list(out.rglob("*.tmp"))


# -- the addition preset: the proposer writes sums ---------------------------------------------

ADDITION_SIZES: dict = {
    "rounds": 1,
    "seed": 1,
    "model.dim": 32,
    "model.n_layers": 2,
    "model.n_heads": 2,
    "model.threads": 1,
    "seed_train.steps": 200,
    "train.steps": 4,
    "train.batch_size": 16,
    "tasks.seed_examples": 200,
    "tasks.seed_check": 0.0,
    "tasks.seed_restarts": 0,
    "tasks.seed_stall_steps": 0,
    "tasks.seed_levels": [1, 2],
    "tasks.heldout_levels": [1, 2, 3, 4],
    "tasks.heldout_per_level": 4,
    "creator.per_round": 40,
    "creator.proposer.proposals": 60,
    "creator.proposer.seed_examples": 400,
    "creator.min_trials": 1,
    "creator.start_level": 1,  # round 1 asks 1-2 digits, which this tiny seed half solves
    "reasoner.samples": 4,
    "reasoner.temperature": 1.0,
    "reasoner.batch_size": 64,
}


def test_self_play_on_addition_trains_on_sums_the_model_wrote(tmp_path):
    cfg = load_config("self-play-addition", None, nested(ADDITION_SIZES))
    out = tmp_path / "run"
    summary = run_loop(cfg, out, show_progress=False, log=lambda _: None)
    assert summary["complete"]
    fam = get_family("addition", **cfg.tasks.options)
    held = {t["id"] for t in pq.read_table(out / "heldout.parquet").to_pylist()}

    # Round 0: the proposer's format, two n-digit operands behind `?Ln:`, at every level it may
    # be asked for (up to `creator.max_level`, beyond the held-out levels).
    seeds = [
        e
        for e in read_records(out / "rounds/r000/sft.parquet", SFTExample)
        if e.prompt.startswith("?L")
    ]
    assert len(seeds) == ADDITION_SIZES["creator.proposer.seed_examples"]
    assert cfg.creator.max_level == 12
    assert {e.prompt for e in seeds} == {f"?L{lv}:" for lv in range(1, 13)}
    assert all(e.prompt == f"?L{fam.program_level(e.completion)}:" for e in seeds)

    # Round 1: the tasks are the model's own sums (topped up by the generator only if few
    # verify), each the family's task of its program, with the sandbox's sum as the answer.
    d = out / "rounds/r001"
    tasks = read_records(d / "tasks.parquet", Task)
    info = json.loads((out / "summary.json").read_text())["rounds"][1]["self_play"]
    proposed = [t for t in tasks if t.made_by.startswith(proposer.PROPOSER_MARK)]
    assert len(proposed) == info["kept"] > 10 and len(tasks) == info["kept"] + info["filled"]
    for t in proposed:
        a, b = (int(x) for x in t.params["program"].split("+"))
        assert t.family == "addition" and t.id not in held
        assert (t.prompt, t.answer) == (fam.from_operands(a, b, t.difficulty).prompt, t.answer)
        assert t.answer == fam.answer(a + b, t.difficulty)
        assert t.difficulty == max(len(str(a)), len(str(b)))
    rejected_rows = read_records(d / "rejected_tasks.parquet", RejectedTask)
    assert (
        info["verified"]
        + sum(
            n
            for why, n in info["rejected"].items()
            if why not in ("duplicate", "over_limit", "heldout")
        )
        == info["proposals"]
    )
    assert len(rejected_rows) == sum(info["rejected"].values())

    # The proposer trains on exactly its proposals the solver sometimes solved, relabelled to
    # the digits they have.
    traces = read_records(d / "traces.parquet", Trace)
    judgements = read_records(d / "judgements.parquet", Judgement)
    rates = proposer.solve_rates(traces, judgements)
    rewarded = {t.id: t for t in proposed if 0 < rates.get(t.id, 0) < 1}
    trained = [e for e in read_records(d / "sft.parquet", SFTExample) if e.prompt.startswith("?L")]
    assert trained and {e.task_id for e in trained} == set(rewarded)
    for e in trained:
        t = rewarded[e.task_id]
        assert (e.prompt, e.completion) == (f"?L{t.difficulty}:", t.params["program"])
