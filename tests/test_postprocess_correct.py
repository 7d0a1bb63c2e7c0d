"""The Post-Processor's correct operations: the correction prompt,
Self-Refine, the trained corrector, SCoRe's reward shaping, the held-out correction metric, and
short loop runs of every correction mode."""

from __future__ import annotations

import json
import random

import pytest
import torch

from reasonloop.algorithms.score import score_groups, shaped_reward
from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ConfigError, ModelConfig, TrainConfig, load_config
from reasonloop.evaluator.gold import judge_gold
from reasonloop.loop.heldout_correction import correction_effect, fixed_and_broken
from reasonloop.loop.run import run as run_loop
from reasonloop.loop.store import read_records
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.postprocess import correction_format as cf
from reasonloop.postprocess.corrector import corrector_examples, corrupt_answer, seed_examples
from reasonloop.postprocess.self_refine import refine
from reasonloop.reasoner.solve import reference_traces
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.tasks.registry import get_family
from reasonloop.types import Decision, Judgement, SFTExample, Task, Trace

FAM = AdditionFamily(steps=True)
TASK = FAM.from_operands(58, 67, 2)  # columns: 8+7+0=15, 5+6+1=12; answer 521 (reversed)


def _trace(tid: str, steps: list[str], answer: str, parent: str | None = None, **dec) -> Trace:
    return Trace(
        id=tid,
        task_id=TASK.id,
        text=FAM.render(steps, answer),
        steps=steps,
        answer=answer,
        producer="r",
        decoding=dec,
        parent=parent,
    )


def _judge(trace: Trace, right: bool) -> Judgement:
    return Judgement(trace.id, "gold", "outcome", [float(right)], verdict=right)


# ----------------------------------------------------------------------- correction prompt


def test_correction_prompt_round_trip():
    p = cf.build(TASK.prompt, "8+7+0=15;5+6+0=11#111\n", "1")
    assert p == TASK.prompt + "8+7+0=15;5+6+0=11#111|1|"
    assert cf.parse(p, TASK.prompt) == ("8+7+0=15;5+6+0=11#111", "1")
    for fb in ("?", "x", "0", "99"):
        assert cf.parse(cf.build("q=", "12", fb), "q=") == ("12", fb)
    # the model's attempt is untrusted: the mark and later lines are removed from it
    assert cf.build("q=", "1|2\n|junk", "x") == "q=12|x|"
    assert all(c in set(cf.MARK + cf.NO_FEEDBACK + cf.WRONG + "0123456789") for c in "|?x19")


def test_correction_prompt_parse_is_defensive_and_build_names_the_problem():
    for bad in ("", "q=12", "q=12|x", "q=1|x|2", "q=12|y|", "q=12|100|", "r=12|x|", "q=1\n2|x|"):
        assert cf.parse(bad, "q=") is None, bad
    assert cf.parse(None, "q=") is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="feedback 'wrong'"):
        cf.build("q=", "12", "wrong")
    with pytest.raises(ValueError, match="contains the correction mark"):
        cf.build("a|b=", "12", "x")


def test_feedback_from_the_evaluator():
    wrong_second = _trace("w", ["8+7+0=15", "5+6+0=11"], "111")
    assert cf.feedback_for("none", FAM, TASK, wrong_second) == "?"
    assert cf.feedback_for("outcome", FAM, TASK, wrong_second) == "x"
    assert cf.feedback_for("step", FAM, TASK, wrong_second) == "1"  # the family's check_step
    assert cf.feedback_for("step", FAM, TASK, wrong_second, [0.2, 0.9]) == "0"  # step scores
    answer_only = _trace("a", ["8+7+0=15", "5+6+1=12"], "999")  # steps right, answer wrong
    assert cf.feedback_for("step", FAM, TASK, answer_only) == "x"


# ------------------------------------------------------------------------------------ SCoRe


def test_score_reward_shaping_by_hand():
    alpha = 0.5
    assert shaped_reward(0.0, 1.0, alpha) == 1.5  # fixed: 1 + alpha
    assert shaped_reward(1.0, 1.0, alpha) == 1.0  # kept right
    assert shaped_reward(0.0, 0.0, alpha) == 0.0  # wrong twice
    assert shaped_reward(1.0, 0.0, alpha) == -0.5  # broken: -alpha
    assert shaped_reward(0.25, 0.75, 2.0) == 0.75 + 2.0 * 0.5


def test_score_groups_pair_each_second_attempt_with_its_own_prompt_and_reward():
    a1 = _trace("a1", [], "111")
    b1 = _trace("b1", [], "521")
    a2 = _trace("a2", [], "521", parent="a1", postprocess="score", attempt=1)
    b2 = _trace("b2", [], "000", parent="b1", postprocess="score", attempt=1)
    refined = _trace("c2", [], "521", parent="a1", postprocess="refine", attempt=1)
    judg = [_judge(a1, False), _judge(b1, True), _judge(a2, True), _judge(b2, False)]
    judg.append(_judge(refined, True))
    groups = score_groups({TASK.id: TASK}, [a1, b1, a2, b2, refined], judg, alpha=1.0)
    assert len(groups) == 1
    g = groups[0]
    assert g.completions == ["521", "000"]  # the refine correction is not a SCoRe attempt
    assert g.prompts == [TASK.prompt + "111|?|", TASK.prompt + "521|?|"]
    assert g.rewards == [2.0, -1.0]  # fixed: 1 + 1; broken: 0 - 1
    # a group of one second attempt has no baseline
    assert score_groups({TASK.id: TASK}, [a1, a2], judg, 1.0) == []


# ------------------------------------------------------------------------------- corrector


def test_corrector_examples_only_from_tasks_with_wrong_and_right_traces():
    other = FAM.from_operands(11, 22, 2)
    tasks = {TASK.id: TASK, other.id: other}
    right = _trace("r", ["8+7+0=15", "5+6+1=12"], "521")
    w1 = _trace("w1", ["8+7+0=15", "5+6+0=11"], "111")
    w2 = _trace("w2", [], "999")
    w3 = _trace("w3", [], "998")
    hinted = _trace("h", [], "997", hint=True)
    only_wrong = Trace("o", other.id, "000", [], "000", "r")  # no right trace for `other`
    traces = [right, w1, w2, w3, hinted, only_wrong]
    judg = [_judge(t, t is right) for t in traces]
    ex = corrector_examples(tasks, traces, judg, FAM, 3, 2, "step", keep_share=0.0)
    assert [(e.prompt, e.completion) for e in ex] == [
        (TASK.prompt + w1.text + "|?|", right.text),
        (TASK.prompt + w1.text + "|1|", right.text),  # first wrong step: index 1
        (TASK.prompt + "999|?|", right.text),
        (TASK.prompt + "999|x|", right.text),  # no steps to blame: outcome feedback
    ]
    assert {(e.task_id, e.trace_id, e.round) for e in ex} == {(TASK.id, "r", 3)}
    no_fb = corrector_examples(tasks, traces, judg, FAM, 3, 5, "none", keep_share=0.0)
    assert [e.prompt[len(TASK.prompt) :] for e in no_fb] == [w1.text + "|?|", "999|?|", "998|?|"]
    # with keeps: the right attempt -> itself, no feedback, as many as the `?` fixes at 0.5
    kept = corrector_examples(tasks, traces, judg, FAM, 3, 2, "step", keep_share=0.5)
    assert [(e.prompt, e.completion) for e in kept[:4]] == [(e.prompt, e.completion) for e in ex]
    assert [(e.prompt, e.completion, e.trace_id) for e in kept[4:]] == [
        (TASK.prompt + right.text + "|?|", right.text, "r")
    ] * 2
    # a share of 0.75 asks three keeps per fix; the task's one right trace is used in turn
    many = corrector_examples(tasks, traces, judg, FAM, 3, 5, "none", keep_share=0.75)
    keeps = [e for e in many if e.prompt == TASK.prompt + right.text + "|?|"]
    assert len(many) == 12 and len(keeps) == 9 and {e.completion for e in keeps} == {right.text}
    with pytest.raises(ValueError, match="keep_share must be in"):
        corrector_examples(tasks, traces, judg, FAM, 3, 2, "none", keep_share=1.0)


def test_keep_examples_come_from_the_tasks_that_have_fixes():
    """A task whose traces are all right gives no keep: keeps and fixes share their tasks, so
    what tells them apart is the attempt."""
    other = FAM.from_operands(11, 22, 2)
    tasks = {TASK.id: TASK, other.id: other}
    right = _trace("r", ["8+7+0=15", "5+6+1=12"], "521")
    wrong = _trace("w", [], "999")
    solved = Trace("s", other.id, "330", [], "330", "r")
    judg = [_judge(right, True), _judge(wrong, False)]
    judg.append(Judgement("s", "gold", "outcome", [1.0], verdict=True))
    ex = corrector_examples(tasks, [right, wrong, solved], judg, FAM, 1, 2, "none", 0.5)
    assert [e.prompt for e in ex] == [TASK.prompt + "999|?|", TASK.prompt + right.text + "|?|"]
    # an attempt that `clean_attempt` would change cannot be kept as it is
    two_lines = _trace("r2", [], "521\nmore")
    judg2 = [_judge(two_lines, True), _judge(wrong, False)]
    only_fix = corrector_examples(tasks, [two_lines, wrong], judg2, FAM, 1, 2, "none", 0.5)
    assert [e.prompt for e in only_fix] == [TASK.prompt + "999|?|"]


def test_seed_examples_inject_one_wrong_digit():
    rng = random.Random(0)
    ref = _trace("ref", ["8+7+0=15", "5+6+1=12"], "521")
    for _ in range(20):
        bad = corrupt_answer(FAM, ref, rng)
        assert bad is not None and bad.startswith("8+7+0=15;5+6+1=12#")
        answer = bad.rpartition("#")[2]
        assert sum(a != b for a, b in zip(answer, "521", strict=True)) == 1
    ex = seed_examples({TASK.id: TASK}, [ref], FAM, 3, "outcome", random.Random(1), 0.0)
    assert len(ex) == 6 and all(e.completion == ref.text and e.trace_id == "ref" for e in ex)
    assert [e.prompt[-3:] for e in ex] == ["|?|", "|x|"] * 3
    assert all(e.prompt != TASK.prompt + ref.text + "|?|" for e in ex)  # every one a fix


def test_seed_examples_keep_a_share_of_right_attempts_unchanged():
    rng = random.Random(0)
    tasks = [FAM.from_operands(rng.randrange(100), rng.randrange(100), 2) for _ in range(30)]
    refs = reference_traces(FAM, tasks, 0)
    by_id = {t.id: t for t in tasks}
    ex = seed_examples(by_id, refs, FAM, 40, "outcome", random.Random(2), keep_share=0.25)
    keeps = [e for e in ex if e.prompt == by_id[e.task_id].prompt + e.completion + "|?|"]
    fixes = [e for e in ex if e not in keeps]
    assert len(keeps) == 10 and len(fixes) == 2 * 30  # 30 injected errors, with `?` and `x`
    assert sum(e.prompt.endswith("|?|") for e in ex) == 40  # one `?` example per drawn trace
    for e in fixes:  # the attempt differs from the completion in exactly one answer digit
        attempt = e.prompt[len(by_id[e.task_id].prompt) : -3]
        assert attempt != e.completion and len(attempt) == len(e.completion)


# ----------------------------------------------------------------- held-out correction metric


def test_fixed_and_broken_by_hand():
    got = fixed_and_broken([False, False, False, True, True], [True, False, True, False, True])
    assert got == {
        "fixed": 2 / 3,
        "broken": 1 / 2,
        "n_fixed": 2,
        "n_broken": 1,
        "pass@1_first": 2 / 5,
        "pass@1_second": 3 / 5,
        "wrong": 3,
        "right": 2,
    }
    assert fixed_and_broken([], [])["fixed"] == 0.0
    with pytest.raises(ValueError, match="2 first attempts but 1 second"):
        fixed_and_broken([True, False], [True])


# ----------------------------------------------------------------- real tiny models


def test_self_refine_corrects_up_to_k_times_with_lineage():
    """An untrained model is always wrong, so every wrong trace gets all K corrections,
    each the child of the one before."""
    fam = AdditionFamily()
    tasks = [fam.from_operands(a, a, 1) for a in range(3)]
    by_id = {t.id: t for t in tasks}
    model = TinyModel.create(ModelConfig(dim=16, n_layers=1, n_heads=2, max_seq_len=48), seed=0)
    wrong = [Trace(f"w{i}", t.id, "9", [], "9", "r") for i, t in enumerate(tasks)]
    new, judg = refine(
        model, fam, by_id, wrong, lambda ts: judge_gold(fam, by_id, ts, 1), 3, "outcome",
        Sampling(temperature=1.0, max_new_tokens=4, seed=5), 8, "reasoner:r0", 1,
    )  # fmt: skip
    assert len(new) == 9 and len(judg) == 9 and not any(j.verdict for j in judg)
    ids = {t.id for t in new}
    for t in new:
        k = t.decoding["attempt"]
        assert t.decoding["postprocess"] == "refine" and 1 <= k <= 3 and t.round == 1
        assert (t.parent in ids) == (k > 1) and (t.parent.startswith("w")) == (k == 1)
    # a redone phase replays the same corrections (seeded)
    again, _ = refine(
        model, fam, by_id, wrong, lambda ts: judge_gold(fam, by_id, ts, 1), 3, "outcome",
        Sampling(temperature=1.0, max_new_tokens=4, seed=5), 8, "reasoner:r0", 1,
    )  # fmt: skip
    assert [t.to_row() for t in again] == [t.to_row() for t in new]


def test_trained_corrector_fixes_more_injected_errors_than_it_breaks():
    """Sorting two digits: the model learns every task, and correction examples (an injected
    wrong digit -> the right answer, and as many right attempts -> themselves) for 50 of them;
    on the other tasks it fixes injected errors and leaves right attempts right."""
    torch.set_num_threads(1)
    fam = get_family("sorting", steps=False)
    rng = random.Random(3)
    tasks = list({t.id: t for t in (fam.make(rng, 2) for _ in range(3000))}.values())
    by_id = {t.id: t for t in tasks}
    refs = reference_traces(fam, tasks, 0)
    seen, held = refs[:50], refs[50:]
    data = [SFTExample(by_id[t.task_id].prompt, t.text, t.task_id, t.id) for t in refs]
    data += seed_examples(by_id, seen, fam, 400, "none", random.Random(1), keep_share=0.5)
    model = TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=32), seed=0)
    train_sft(model, data, TrainConfig(lr=5e-3, steps=200, batch_size=32, warmup_steps=10), 0)
    greedy = Sampling(temperature=0.0, max_new_tokens=6)
    inject = random.Random(5)
    held_tasks = [by_id[h.task_id] for h in held]
    wrong = [cf.build(t.prompt, corrupt_answer(fam, h, inject), "?") for t, h in zip(held_tasks, held, strict=True)]  # fmt: skip
    right = [cf.build(t.prompt, h.text, "?") for t, h in zip(held_tasks, held, strict=True)]
    second = [c[0].text for c in model.generate(wrong + right, 1, greedy)]
    ok = [fam.verify(t, fam.parse(s)[1]) == 1.0 for t, s in zip(held_tasks * 2, second, strict=True)]  # fmt: skip
    got = fixed_and_broken([False] * len(held) + [True] * len(held), ok)
    assert got["fixed"] >= 0.5 and got["n_fixed"] > got["n_broken"], got
    # the held-out metric on the same model: its own first attempts, then second attempts
    effect = correction_effect(model, fam, held_tasks, 6)
    assert effect["wrong"] + effect["right"] == len(held_tasks)
    assert effect["by_level"]["2"]["right"] == effect["right"]  # one level, the whole set
    assert effect["broken"] < 0.5, effect


# ------------------------------------------------------------------------------- loop runs

TINY = {
    "rounds": 1,
    "seed": 1,
    "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "threads": 1},
    "seed_train": {"steps": 20},
    "train": {"steps": 4, "batch_size": 16},
    "tasks": {
        "seed_examples": 64,
        "heldout_per_level": 4,
        "seed_levels": [1, 2],
        "heldout_levels": [1, 2],
    },  # fmt: skip
    "creator": {"per_round": 8},
    "reasoner": {"samples": 2, "batch_size": 32},
}


@pytest.mark.parametrize(
    ("preset", "correct"),
    [
        ("easy-to-hard", {"mode": "refine", "attempts": 2, "feedback": "step"}),
        ("rft", {"mode": "corrector", "seed_pairs": 16}),
        ("grpo-zero", {"mode": "score", "alpha": 2.0, "seed_pairs": 16}),
    ],
)
def test_loop_runs_each_correction_mode_and_writes_the_metric(tmp_path, preset, correct):
    overrides = TINY | {"postprocess": {"correct": correct}}
    if preset == "grpo-zero":
        overrides["strategy"] = {"rl": {"dynamic_sampling": False}}
    cfg = load_config(preset, None, overrides)
    summary = run_loop(cfg, tmp_path / "run", show_progress=False, log=lambda _: None)
    assert summary["complete"]
    d = tmp_path / "run" / "rounds" / "r001"
    metrics = json.loads((d / "metrics.json").read_text())
    c = metrics["heldout"]["correction"]
    assert 0.0 <= c["fixed"] <= 1.0 and 0.0 <= c["broken"] <= 1.0
    assert c["wrong"] + c["right"] == 4 * 2  # every held-out task, first attempt right or wrong
    assert set(c["by_level"]) == {"1", "2"}
    for key in ("wrong", "right", "n_fixed", "n_broken"):  # the levels add up to the whole
        assert sum(lv[key] for lv in c["by_level"].values()) == c[key]
    assert c["pass@1_first"] == metrics["heldout"]["pass@1"]  # the same greedy first attempts
    r0 = json.loads((tmp_path / "run" / "rounds" / "r000" / "metrics.json").read_text())
    assert "correction" in r0["heldout"]  # the baseline before any correction training
    traces = {t.id: t for t in read_records(d / "traces.parquet", Trace)}
    fixes = read_records(d / "corrections.parquet", Trace)
    verdicts = read_records(d / "correction_judgements.parquet", Judgement)
    decisions = read_records(d / "decisions.parquet", Decision)
    assert fixes and len(verdicts) == len(fixes)
    fix_ids = {t.id for t in fixes}
    assert {d.trace_id for d in decisions} >= fix_ids  # every correction has a decision
    label = "score" if correct["mode"] == "score" else "refine"
    for t in fixes:
        assert t.decoding["postprocess"] == label
        assert t.parent in traces or t.parent in fix_ids  # lineage back to a sampled trace
    if correct["mode"] == "score":
        assert len(fixes) == len(traces)  # a second attempt for every first attempt
        assert metrics["train"]["groups"] > 0
    else:
        # only traces judged wrong are corrected
        judged = read_records(d / "judgements.parquet", Judgement)
        right = {j.trace_id for j in judged if j.verdict}
        assert not any(t.parent in right for t in fixes)
    if correct["mode"] == "corrector":
        sft = read_records(d / "sft.parquet", SFTExample)
        seed_sft = read_records(tmp_path / "run" / "rounds" / "r000" / "sft.parquet", SFTExample)
        assert sum(e.prompt.endswith("|?|") for e in seed_sft) == 16
        # half of them (keep_share 0.5) keep a right attempt as it is
        seed_tasks = {t.id: t for t in read_records(tmp_path / "run" / "rounds" / "r000" / "tasks.parquet", Task)}  # fmt: skip
        keeps = [e for e in seed_sft if e.prompt == seed_tasks[e.task_id].prompt + e.completion + "|?|"]  # fmt: skip
        assert len(keeps) == 8
        assert all(e.prompt.endswith(("|?|", "|x|")) for e in sft if "|" in e.prompt)


def test_corrector_preset_trains_on_fixes_and_keeps_of_its_own_round(tmp_path):
    """The shipped corrector preset, shrunk: round 1's correction examples are the round's own
    wrong answers -> a right one of the same task, and its own right answers -> themselves,
    half of the `?` examples each."""
    overrides = TINY | {
        "seed_train": {"steps": 150},
        "tasks": {
            "seed_examples": 400,
            "heldout_per_level": 8,
            "seed_levels": [2, 3],
            "heldout_levels": [2, 3],
        },  # fmt: skip
        "creator": {"per_round": 48, "start_level": 3},
        "reasoner": {"samples": 4, "batch_size": 64},
        "postprocess": {"correct": {"seed_pairs": 64}},
    }
    cfg = load_config("corrector", None, overrides)
    assert cfg.tasks.family == "chain_sum" and cfg.postprocess.correct.keep_share == 0.5
    run_loop(cfg, tmp_path / "run", show_progress=False, log=lambda _: None)
    d = tmp_path / "run" / "rounds" / "r001"
    tasks = {t.id: t for t in read_records(d / "tasks.parquet", Task)}
    traces = read_records(d / "traces.parquet", Trace) + read_records(d / "corrections.parquet", Trace)  # fmt: skip
    verdicts = read_records(d / "judgements.parquet", Judgement)
    verdicts += read_records(d / "correction_judgements.parquet", Judgement)
    right = {j.trace_id for j in verdicts if j.verdict}
    texts = {(t.task_id, t.text, t.id in right) for t in traces}
    sft = [e for e in read_records(d / "sft.parquet", SFTExample) if e.round == 1 and "|" in e.prompt]  # fmt: skip
    keeps, fixes = [], []
    for e in sft:
        attempt, fb = cf.parse(e.prompt, tasks[e.task_id].prompt) or ("", "")
        assert (e.task_id, e.completion, True) in texts  # the completion: a right answer of it
        (keeps if attempt == e.completion else fixes).append((attempt, fb, e))
    assert keeps and fixes
    assert all(fb == "?" for _, fb, _ in keeps)
    assert all((e.task_id, a, False) in texts for a, _, e in fixes)  # its own wrong answers
    assert len(keeps) == sum(fb == "?" for _, fb, _ in fixes)  # keep_share 0.5


def test_correction_modes_need_a_matching_algorithm():
    with pytest.raises(ConfigError, match="postprocess.correct.mode 'corrector'"):
        load_config("grpo-zero", None, {"postprocess": {"correct": {"mode": "corrector"}}})
    with pytest.raises(ConfigError, match="'score' trains second attempts by policy gradient"):
        load_config("rft", None, {"postprocess": {"correct": {"mode": "score"}}})
    with pytest.raises(ConfigError, match="postprocess.correct.mode"):
        load_config("rft", None, {"postprocess": {"correct": {"mode": "fix"}}})
    default = load_config("rft")
    assert default.postprocess.correct.mode == "none"
