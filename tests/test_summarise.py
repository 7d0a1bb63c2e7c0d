"""The Post-Processor's summarise: kept traces train as their verified core, with lineage, and
only where a family's steps stand alone."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from reasonloop.algorithms.behaviour_cloning import sft_examples
from reasonloop.config import PostProcessConfig, load_config
from reasonloop.loop.run import run as run_loop
from reasonloop.loop.store import read_records
from reasonloop.postprocess.filter import process
from reasonloop.postprocess.summarise import (
    SUMMARIES_FILE,
    summarise_kept,
    summarise_steps,
    summarise_trace,
    with_summaries,
)
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.tasks.families.program import ProgramFamily
from reasonloop.types import Judgement, SFTExample, Task, Trace

FAM = ProgramFamily()
TASK = FAM.task("8*(9-7)=", "16", 2, {"program": "8*(9-7)"})  # 9-7=2;8*2=16#16


def _trace(tid: str, steps: list[str], answer: str, task: Task = TASK, fam=FAM) -> Trace:
    return Trace(tid, task.id, fam.render(steps, answer), steps, answer, "r")


def test_summarise_steps_drops_repeats_and_wrong_steps_keeps_unchecked():
    kept, dropped = summarise_steps(["a", "b", "a", "c", "d"], [True, False, True, None])
    # "a" again is a repeat, "b" was judged wrong, "c" is unchecked, "d" has no verdict
    assert kept == ["a", "c", "d"]
    assert dropped == [(1, "judged wrong"), (2, "repeated")]
    assert summarise_steps([], []) == ([], [])


def test_summarise_trace_records_lineage_and_only_summarises_right_traces():
    tr = _trace("t0", ["9-7=2", "9-7=2", "8*2=17", "8*2=16"], "16")
    summary = summarise_trace(FAM, TASK, tr, True, None, rnd=2)
    assert summary is not None
    assert summary.steps == ["9-7=2", "8*2=16"] and summary.text == "9-7=2;8*2=16#16"
    assert FAM.parse(summary.text) == (summary.steps, "16")
    assert summary.parent == "t0" and summary.round == 2
    assert summary.decoding == {"postprocess": "summarise", "dropped": [[1, "repeated"], [2, "judged wrong"]]}  # fmt: skip
    assert summarise_trace(FAM, TASK, tr, False, None, 2) is None  # wrong answer: not summarised
    clean = _trace("t1", ["9-7=2", "8*2=16"], "16")
    assert summarise_trace(FAM, TASK, clean, True, None, 2) is None  # nothing to drop
    # step-level scores win over the family's check: here step 0 is judged wrong
    by_scores = summarise_trace(FAM, TASK, clean, True, [0.1, 0.9], 2)
    assert by_scores is not None and by_scores.steps == ["8*2=16"]


def test_positional_steps_are_never_summarised():
    # 33+44 has two equal columns: the "repeat" is the second column, not a redundancy.
    add = AdditionFamily(steps=True)
    task = add.from_operands(33, 44, 2)
    steps, answer = add.reference(task)
    assert steps[0] == steps[1]
    ref = _trace("a", steps, answer, task, add)
    assert summarise_trace(add, task, ref, True, None, 1) is None
    wrong = _trace("b", [steps[0], "3+4+0=8", steps[1]], answer, task, add)
    assert summarise_trace(add, task, wrong, True, None, 1) is None


def test_a_right_answer_with_a_wrong_step_is_summarised_not_dropped():
    detour = _trace("a", ["9-7=2", "8*2=18", "8*2=16"], "16")
    clean = _trace("b", ["9-7=2", "8*2=16"], "16")
    wrong_answer = _trace("c", ["9-7=2", "8*2=18"], "18")
    traces = [detour, clean, wrong_answer]
    judgements = [
        Judgement(t.id, "gold", "outcome", [float(ok)], verdict=ok)
        for t, ok in zip(traces, [True, True, False], strict=True)
    ]
    tasks = {TASK.id: TASK}
    # Without summarise the wrong step costs the trace; with it, the trace is kept...
    plain = process(tasks, traces, judgements, PostProcessConfig(), FAM, 1)
    assert [d.reason for d in plain] == ["bad step", "kept", "judged wrong"]
    decisions = process(tasks, traces, judgements, PostProcessConfig(summarise=True), FAM, 1)
    assert [d.kept for d in decisions] == [True, True, False]
    # ... and trains as its summary; the clean trace has nothing to drop and stays as it is.
    summaries = summarise_kept(tasks, traces, judgements, decisions, FAM, 1)
    assert [s.parent for s in summaries] == ["a"]
    assert summaries[0].text == "9-7=2;8*2=16#16"
    examples = with_summaries(sft_examples(tasks, traces, decisions, 1), summaries)
    assert [(e.trace_id, e.completion) for e in examples] == [
        (summaries[0].id, summaries[0].text),
        ("b", clean.text),
    ]


def test_summarise_in_a_real_run_stores_summaries_and_trains_on_them(tmp_path):
    overrides = {
        "rounds": 2,
        "seed": 0,
        "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "threads": 1, "max_seq_len": 64},
        "seed_train": {"steps": 300},
        "train": {"steps": 4, "batch_size": 16},
        "tasks": {
            "family": "program",
            "seed_levels": [1, 2],
            "heldout_levels": [1, 2, 3],
            "seed_examples": 200,
            "heldout_per_level": 4,
        },
        "creator": {"per_round": 48},
        "reasoner": {"samples": 8, "temperature": 1.2, "max_new_tokens": 40},
        "postprocess": {"summarise": True, "max_chars": 40},
    }
    cfg = load_config("rft", overrides=overrides)
    summary = run_loop(cfg, tmp_path, show_progress=False, log=lambda *_: None)
    n_summarised = 0
    for r in (1, 2):
        d = tmp_path / "rounds" / f"r{r:03d}"
        summaries = read_records(d / SUMMARIES_FILE, Trace)
        traces = {t.id: t for t in read_records(d / "traces.parquet", Trace)}
        decided = pq.read_table(d / "decisions.parquet").to_pylist()
        kept = {row["trace_id"] for row in decided if row["kept"]}
        examples = read_records(d / "sft.parquet", SFTExample)
        by_id = {s.id: s for s in summaries}
        for s in summaries:
            parent = traces[s.parent]
            assert s.parent in kept and s.answer == parent.answer
            assert len(s.steps) < len(parent.steps) and set(s.steps) <= set(parent.steps)
        # every summary replaces its parent in the training set, and nothing else does
        assert {e.trace_id for e in examples if e.trace_id in by_id} == set(by_id)
        assert not {e.trace_id for e in examples} & {s.parent for s in summaries}
        for e in examples:
            if e.trace_id in by_id:
                assert e.completion == by_id[e.trace_id].text
        assert summary["rounds"][r]["data"]["summarised"]["traces"] == len(summaries)
        n_summarised += len(summaries)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert SUMMARIES_FILE in manifest["rounds"]["1"]["phases"]["process"]["files"]
    assert n_summarised > 0  # this barely trained model writes right answers with wrong steps
