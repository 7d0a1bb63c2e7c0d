"""Reliability checks: each rejection carries its reason; the sampled check uses a real tiny
model (trained for a second to answer one constant) and re-derives a disputed gold."""

from __future__ import annotations

import pytest

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ModelConfig, ReasonerConfig, ReliabilityConfig, TrainConfig
from reasonloop.models.tiny import TinyModel
from reasonloop.tasks.families.chain_sum import ChainSumFamily
from reasonloop.tasks.families.program import ProgramFamily
from reasonloop.tasks.reliability import check_tasks, rule_score
from reasonloop.types import SFTExample

FAST = ReasonerConfig(max_new_tokens=8, batch_size=64)


def test_execution_check_and_scorer_reject_with_reasons():
    fam = ProgramFamily()
    good = fam.from_program("3+4", "7")
    wrong = fam.from_program("2*5", "11")  # stated answer differs from the sandbox's 10
    crash = fam.from_program("1//0", "0")
    missing = fam.from_program("1+1", "2")
    missing.answer = None
    leaked = fam.from_program("100+23", "123")
    leaked.prompt = "100+23=123="  # the answer is written in the prompt
    kept, rejects, info = check_tasks(
        [good, wrong, crash, missing, leaked], fam, ReliabilityConfig(enabled=True)
    )
    assert [t.id for t in kept] == [good.id]
    why = {r.task_id: r.reason for r in rejects}
    assert why == {
        wrong.id: "answer_mismatch",
        crash.id: "sandbox_error",
        missing.id: "no_answer",
        leaked.id: "low_score",
    }
    assert info["rejected"] == {
        "answer_mismatch": 1,
        "low_score": 1,
        "no_answer": 1,
        "sandbox_error": 1,
    }
    assert info["checked"] == 5 and info["kept"] == 1


def test_rule_score_and_a_custom_scorer_threshold():
    fam = ProgramFamily()
    t = fam.from_program("3+4", "7")
    assert rule_score(t) == 1.0
    t2 = fam.from_program("3+5", "8")
    t2.prompt = ""
    assert rule_score(t2) == 0.75  # one defect of four
    cfg = ReliabilityConfig(enabled=True, execution_check=False, scorer="none", min_score=0.5)
    kept, rejects, _ = check_tasks([t, t2], fam, cfg, scorer=lambda task: len(task.prompt) / 4)
    assert [x.id for x in kept] == [t.id] and rejects[0].reason == "low_score"
    assert "score 0.000 < 0.5" in rejects[0].detail


@pytest.fixture(scope="module")
def says_two() -> TinyModel:
    """A tiny model that answers `#2` to everything (about a second of training)."""
    model = TinyModel.create(ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=32), seed=0)
    data = [SFTExample(f"{a}+{b}=", "#2") for a in range(10) for b in range(10)]
    train_sft(model, data, TrainConfig(steps=40, batch_size=32, lr=5e-3, warmup_steps=2), seed=0)
    return model


def test_disputed_gold_is_rederived_kept_when_right_dropped_when_wrong(says_two):
    cfg = ReliabilityConfig(enabled=True, samples=4, temperature=0.0, scorer="none")
    chain = ChainSumFamily()
    right = chain.from_terms([3, 4])  # gold 7: the model's confident "2" is wrong
    wrong = chain.from_terms([5, 4])
    wrong.answer = "8"  # a corrupted gold: the reference re-derives 9
    agree = chain.from_terms([1, 1])  # gold 2: no dispute
    kept, rejects, info = check_tasks([right, wrong, agree], chain, cfg, says_two, FAST, seed=1)
    assert [t.id for t in kept] == [right.id, agree.id]
    assert [(r.task_id, r.reason) for r in rejects] == [(wrong.id, "gold_disputed")]
    assert "1.00 of samples say 2" in rejects[0].detail
    assert info["rechecked"] == 1
    # A program task's disputed gold is re-derived in the sandbox.
    prog = ProgramFamily()
    t = prog.from_program("3+4", "7")
    kept, rejects, info = check_tasks([t], prog, cfg, says_two, FAST, seed=1)
    assert kept == [t] and info["rechecked"] == 1


def test_scattered_samples_are_ambiguous_only_when_asked():
    untrained = TinyModel.create(ModelConfig(dim=16, n_layers=1, n_heads=2, max_seq_len=32), 0)
    chain = ChainSumFamily()
    tasks = [chain.from_terms([3, 4]), chain.from_terms([2, 2])]
    loose = ReliabilityConfig(enabled=True, samples=3, scorer="none")
    kept, rejects, _ = check_tasks(tasks, chain, loose, untrained, FAST, seed=2)
    assert kept == tasks and rejects == []  # hard tasks the model fails are kept
    strict = ReliabilityConfig(enabled=True, samples=3, scorer="none", min_agreement=1.0)
    kept, rejects, info = check_tasks(tasks, chain, strict, untrained, FAST, seed=2)
    assert kept == [] and info["rejected"] == {"ambiguous": 2}
