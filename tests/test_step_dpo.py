"""Step-DPO pairs: the first wrong step of a wrong trace against a right step after the same prefix."""

from __future__ import annotations

import random

import pyarrow.parquet as pq

from reasonloop.algorithms.dpo import encode_pair
from reasonloop.algorithms.step_dpo import first_wrong_step, step_pairs
from reasonloop.config import ModelConfig, load_config
from reasonloop.loop.run import run
from reasonloop.models.tiny import TinyModel
from reasonloop.reasoner.format import parse
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.types import Judgement, PreferencePair, Trace

FAM = AdditionFamily(steps=True)
TASK = FAM.from_operands(58, 67, 2)  # columns: 8+7+0=15, 5+6+1=12


def _trace(i: int, steps: list[str], answer: str) -> Trace:
    return Trace(
        id=f"t{i}",
        task_id=TASK.id,
        text=";".join(steps) + "#" + answer,
        steps=steps,
        answer=answer,
        producer="r",
    )


def _judge(trace: Trace, right: bool) -> Judgement:
    return Judgement(
        trace_id=trace.id, evaluator="gold", level="outcome", scores=[float(right)], verdict=right
    )


def test_first_wrong_step_from_the_family_check_or_step_scores():
    bad = _trace(0, ["8+7+0=15", "5+6+0=11"], "111")
    assert first_wrong_step(FAM, TASK, bad, None) == 1
    assert first_wrong_step(FAM, TASK, bad, [0.2, 0.9]) == 0  # step scores win when present
    assert first_wrong_step(FAM, TASK, _trace(1, ["8+7+0=15", "5+6+1=12"], "521"), None) is None


def test_pairs_share_the_prefix_and_differ_at_the_first_wrong_step():
    right = _trace(0, ["8+7+0=15", "5+6+1=12"], "521")
    wrong_second = _trace(1, ["8+7+0=15", "5+6+0=11"], "111")
    wrong_first = _trace(2, ["8+7+0=14", "5+6+1=12"], "421")
    wrong_carry = _trace(
        3, ["8+7+1=16", "5+6+1=12"], "621"
    )  # first step wrong, but so is "right"'s? no: differs
    traces = [right, wrong_second, wrong_first, wrong_carry]
    judg = [
        _judge(right, True),
        _judge(wrong_second, False),
        _judge(wrong_first, False),
        _judge(wrong_carry, False),
    ]
    pairs = step_pairs({TASK.id: TASK}, traces, judg, FAM, 1, 5, random.Random(0))
    by_rejected = {p.rejected: p for p in pairs}
    assert set(by_rejected) == {"5+6+0=11", "8+7+0=14", "8+7+1=16"}
    p = by_rejected["5+6+0=11"]
    assert p.prompt == TASK.prompt + "8+7+0=15;" and p.chosen == "5+6+1=12" and p.level == "step"
    assert (
        by_rejected["8+7+0=14"].prompt == TASK.prompt
        and by_rejected["8+7+0=14"].chosen == "8+7+0=15"
    )
    assert all(p.task_id == TASK.id and p.round == 1 for p in pairs)
    # no right trace: no pair; per_task caps
    assert step_pairs({TASK.id: TASK}, traces[1:], judg[1:], FAM, 1, 5, random.Random(0)) == []
    assert len(step_pairs({TASK.id: TASK}, traces, judg, FAM, 1, 1, random.Random(0))) == 1


def test_step_pairs_encode_without_a_closing_newline():
    model = TinyModel.create(ModelConfig(dim=32, n_layers=1, n_heads=4, max_seq_len=64), 0)
    pair = PreferencePair(
        prompt="58+67=8+7+0=15;", chosen="5+6+1=12", rejected="5+6+0=11", level="step"
    )
    (c_ids, c_len), (r_ids, r_len) = encode_pair(model, pair)
    assert c_len == r_len == len(pair.prompt) + 1  # bos + prompt
    assert model.tokenizer.decode(c_ids[c_len:]) == "5+6+1=12"
    outcome = PreferencePair(prompt="1+1=", chosen="2", rejected="3")
    (ids, p_len), _ = encode_pair(model, outcome)
    assert model.tokenizer.decode(ids[p_len:]) == "2\n"


def test_step_dpo_round_in_the_loop(tmp_path):
    cfg = load_config(
        "step-dpo",
        overrides={
            "rounds": 1,
            "model": {"dim": 48, "n_layers": 2, "n_heads": 2, "threads": 1},
            "seed_train": {"steps": 600, "batch_size": 32, "lr": 0.003},
            "train": {"steps": 4, "batch_size": 16},
            "tasks": {
                "seed_levels": [1, 2],
                "seed_examples": 600,
                "heldout_levels": [1, 2],
                "heldout_per_level": 10,
            },
            "creator": {"per_round": 40, "start_level": 1, "levels_ahead": 2},
            "reasoner": {"samples": 6, "batch_size": 64},
        },
    )
    out = tmp_path / "run"
    summary = run(cfg, out, show_progress=False, log=lambda *_: None)
    r1 = out / "rounds/r001"
    pairs = pq.read_table(r1 / "pairs.parquet").to_pylist()
    tasks = {t["id"]: t for t in pq.read_table(r1 / "tasks.parquet").to_pylist()}
    traces = pq.read_table(r1 / "traces.parquet").to_pylist()
    assert pairs, "a 600-step seed gets some steps right and some wrong"
    for p in pairs:
        task = tasks[p["task_id"]]
        assert p["level"] == "step" and p["prompt"].startswith(task["prompt"])
        prefix = p["prompt"][len(task["prompt"]) :]
        own = [parse(t["text"])[0] for t in traces if t["task_id"] == p["task_id"]]
        i = prefix.count(";")
        assert any(
            s[:i] == prefix.split(";")[:i] and len(s) > i and s[i] == p["rejected"] for s in own
        )
        assert any(
            s[:i] == prefix.split(";")[:i] and len(s) > i and s[i] == p["chosen"] for s in own
        )
    assert summary["rounds"][1]["train"]["examples"] == len(pairs)
