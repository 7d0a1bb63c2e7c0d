"""The generative verifier: its format round trip, defensive parsing, training data by hand, P(Y)
read through logprobs against the model's own logits, and the loop (a verifier trained beside
the policy, and the self-rewarding preset judging with it)."""

from __future__ import annotations

import random

import pytest
import torch

from reasonloop.config import ConfigError, ModelConfig, load_config
from reasonloop.evaluator.generative_verifier import (
    NO,
    YES,
    GenerativeVerifier,
    corrupted_items,
    judge_generative,
    judged_items,
    parse_critique,
    parse_verdict,
    step_critique,
    verification_examples,
    verification_pairs,
    verification_prompt,
    verification_target,
)
from reasonloop.loop.run import run
from reasonloop.loop.store import read_records
from reasonloop.models.tiny import TinyModel
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.types import Judgement, SFTExample, Trace

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64)


def test_prompt_and_target_round_trip() -> None:
    assert verification_prompt("12+34=", "46\n") == "12+34=46?"
    for verdict in (True, False):
        for critique in (None, "-", "3", "12"):
            text = verification_target(verdict, critique)
            assert parse_verdict(text) == (critique, verdict)
            assert parse_verdict(text + "\n") == (critique, verdict)
    assert verification_target(True) == "Y" and verification_target(False, "2") == "2|N"


@pytest.mark.parametrize(
    "text,want",
    [
        (None, (None, None)),
        (42, (None, None)),
        ("", (None, None)),
        ("Q", (None, None)),
        ("YN", (None, None)),
        ("y", (None, None)),
        ("Y\nN", (None, True)),
        ("0|N", (None, False)),  # steps count from 1
        ("a|Y", (None, True)),
        ("1234|Y", (None, True)),  # a step number longer than 3 digits
        ("|", (None, None)),
        ("-|", ("-", None)),
        ("2|Y|N", ("2", None)),
        ("\u00e9|Y", (None, True)),
    ],
)
def test_parsing_is_defensive(text, want) -> None:
    assert parse_verdict(text) == want


def test_parse_critique() -> None:
    assert parse_critique("07|") == "7"
    assert parse_critique("-") is None  # no `|`: the critique is not finished
    assert parse_critique("\u0663|") is None  # an Arabic-Indic digit is not a step number


def _stepped() -> tuple[AdditionFamily, object]:
    family = AdditionFamily(steps=True, reverse=False, pad=False, reverse_operands=False)
    task = family.task("58+67=", "125", 2, {"a": 58, "b": 67, "digits": 2})
    return family, task


def test_step_critique_names_the_first_wrong_step() -> None:
    family, task = _stepped()
    steps, answer = family.reference(task)
    assert steps == ["8+7+0=15", "5+6+1=12"] and answer == "125"
    assert step_critique(family, task, steps) == "-"
    assert step_critique(family, task, ["8+7+0=15", "5+6+1=11"]) == "2"
    assert step_critique(family, task, ["8+7+0=14", "5+6+1=11"]) == "1"
    assert step_critique(family, task, ["garbage"]) == "1"


def test_corrupted_items_change_one_digit_and_label_by_the_verifier() -> None:
    family, task = _stepped()
    text = family.render(*family.reference(task))
    trace = Trace("x", task.id, text, [], "125", producer="reference")
    items = corrupted_items(family, {task.id: task}, [trace] * 20, random.Random(0))
    assert len(items) == 40
    for i in range(0, 40, 2):
        assert items[i] == (task, text, True)
        _, bad, ok = items[i + 1]
        assert len(bad) == len(text) and sum(a != b for a, b in zip(bad, text, strict=True)) == 1
        assert ok == bad.endswith("#125")  # right only when the changed digit is in a step
    assert any(not ok for _, _, ok in items)


def test_verification_examples_balance_and_dedup() -> None:
    family, task = _stepped()
    items = [
        (task, "a#125", True),
        (task, "b#125", True),
        (task, "c#125", True),
        (task, "c#125", True),  # a duplicate
        (task, "d#124", False),
    ]
    got = verification_examples(items, family, False, 4, random.Random(0), 2)
    # 3 distinct right, 1 wrong: the wrong one, and right ones fill the rest
    assert sorted(e.completion for e in got) == ["N\n", "Y\n", "Y\n", "Y\n"]
    got = verification_examples(items, family, False, 2, random.Random(0), 2)
    assert sorted(e.completion for e in got) == ["N\n", "Y\n"]
    assert all(e.prompt.startswith("58+67=") and e.prompt.endswith("?") for e in got)
    assert all(e.round == 2 and e.task_id == task.id for e in got)
    with_c = verification_examples(
        [(task, "8+7+0=15;5+6+1=11#115", False)], family, True, 4, random.Random(0), 1
    )
    assert [e.completion for e in with_c] == ["2|N\n"]


def test_verification_pairs_prefer_the_right_verdict() -> None:
    examples = [
        SFTExample("1+1=2?", "Y\n", task_id="a", round=2),
        SFTExample("1+1=3?", "2|N\n", task_id="b", round=2),
        SFTExample("1+1=4?", "garbage\n", task_id="c", round=2),
    ]
    pairs = verification_pairs(examples)
    assert [(p.prompt, p.chosen, p.rejected, p.task_id) for p in pairs] == [
        ("1+1=2?", "Y", "N", "a"),
        ("1+1=3?", "2|N", "2|Y", "b"),
    ]
    assert all(p.level == "outcome" and p.round == 2 for p in pairs)


def test_judged_items_leave_out_hinted_and_unjudged_traces() -> None:
    family, task = _stepped()
    traces = [
        Trace("a", task.id, "125", [], "125", producer="r"),
        Trace("b", task.id, "124", [], "124", producer="r", decoding={"hint": True}),
        Trace("c", task.id, "123", [], "123", producer="r"),
    ]
    judgements = [
        Judgement("a", "gold", "outcome", [1.0], verdict=True),
        Judgement("b", "gold", "outcome", [1.0], verdict=True),
    ]
    assert judged_items({task.id: task}, traces, judgements) == [(task, "125", True)]


def test_p_yes_is_the_models_own_next_token_probability() -> None:
    torch.manual_seed(0)
    model = TinyModel.create(CFG, 0)
    verifier = GenerativeVerifier(model)
    prompts, completions = ["12+34=", "7+8="], ["46", "5;1#15"]
    (ly, ln), _ = verifier.verdict_logprobs(
        [verification_prompt(p, c) for p, c in zip(prompts, completions, strict=True)]
    )
    tok = model.tokenizer
    ids = torch.tensor([[tok.bos_id, *tok.encode(verification_prompt(prompts[0], completions[0]))]])
    model.module.eval()
    with torch.no_grad():
        logp = torch.log_softmax(model.forward(ids).float()[0, -1], dim=-1)
    assert ly == pytest.approx(float(logp[tok.encode(YES)[0]]), abs=1e-4)
    assert ln == pytest.approx(float(logp[tok.encode(NO)[0]]), abs=1e-4)
    p = verifier.score(prompts[:1], completions[:1])[0]
    assert p == pytest.approx(
        float(
            logp.exp()[tok.encode(YES)[0]]
            / (logp.exp()[tok.encode(YES)[0]] + logp.exp()[tok.encode(NO)[0]])
        ),
        abs=1e-4,
    )
    # with a critique: whatever the untrained model writes is parsed into `-` or a step number
    scored = GenerativeVerifier(model, with_critique=True).judge(prompts, completions)
    for q, critique in scored:
        assert 0.0 < q < 1.0
        assert critique == "-" or critique.isdigit()
    # too long for the context: unverifiable, not accepted
    assert verifier.score(["1+1="], ["9" * 70]) == [0.0]


def test_judge_generative_makes_outcome_judgements() -> None:
    model = TinyModel.create(CFG, 0)
    family, task = _stepped()
    traces = [Trace("a", task.id, "125", [], "125", producer="r")]
    verifier = GenerativeVerifier(model)
    (j,) = judge_generative(verifier, {task.id: task}, traces, 3, threshold=0.5)
    assert j.evaluator == "generative" and j.level == "outcome" and j.round == 3
    assert j.verdict == (j.scores[0] >= 0.5)
    assert j.scores[0] == pytest.approx(verifier.score([task.prompt], ["125"])[0])


# --- in the loop -------------------------------------------------------------------------------

LOOP = {
    "rounds": 1,
    "heldout_samples": 2,
    "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "threads": 1},
    "seed_train": {"steps": 120, "batch_size": 32},
    "train": {"steps": 6, "batch_size": 16},
    "tasks": {
        "seed_examples": 200,
        "seed_levels": [1, 2],
        "heldout_levels": [1, 2, 3],
        "heldout_per_level": 6,
    },
    "creator": {"per_round": 16},
    "reasoner": {"samples": 3, "batch_size": 32},
    "strategy": {"replay_seed": 20},
}
VERIFIER = {"enabled": True, "examples_per_round": 8, "seed_examples": 40}


def _sets(extra: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in LOOP.items()}
    for k, v in extra.items():
        out[k] = out.get(k, {}) | v if isinstance(v, dict) else v
    return out


def test_a_verifier_trained_beside_the_policy_is_calibrated_each_round(tmp_path) -> None:
    cfg = load_config(
        "rft", overrides=_sets({"evaluator": {"kind": "gold", "generative_verifier": VERIFIER}})
    )
    summary = run(cfg, tmp_path, show_progress=False, log=lambda _: None)
    assert summary["complete"]
    seed_sft = read_records(tmp_path / "rounds" / "r000" / "sft.parquet", SFTExample)
    verify = [e for e in seed_sft if e.prompt.endswith("?")]
    assert len(verify) == 40 and {e.completion for e in verify} == {"Y\n", "N\n"}
    r1 = read_records(tmp_path / "rounds" / "r001" / "sft.parquet", SFTExample)
    assert 0 < sum(e.prompt.endswith("?") for e in r1) <= 8
    for m in summary["rounds"]:
        assert m["judge"]["evaluator"] == "gold"
    m = summary["rounds"][1]
    assert m["judge"]["accuracy"] == 1.0  # gold verdicts agree with gold
    cal = m["calibration"]["generative_verifier"]
    assert cal["n"] == 2 * 6 * 3 and cal["ece"] is not None and 0 <= cal["ece"] <= 1
    assert "orm" not in m["calibration"]


def test_self_rewarding_judges_with_its_own_verdicts(tmp_path) -> None:
    over = _sets({"evaluator": {"generative_verifier": VERIFIER}})
    cfg = load_config("self-rewarding", overrides=over)
    assert not cfg.uses_gold_after_seed
    summary = run(cfg, tmp_path, show_progress=False, log=lambda _: None)
    assert summary["complete"]
    judgements = read_records(tmp_path / "rounds" / "r001" / "judgements.parquet", Judgement)
    assert judgements and {j.evaluator for j in judgements} == {"generative"}
    assert all(j.verdict == (j.scores[0] >= 0.5) for j in judgements)
    m = summary["rounds"][1]
    assert m["gold_labels_in_training"] is False and summary["rounds"][0]["gold_labels_in_training"]
    assert m["judge"]["evaluator"] == "generative"
    assert m["judge"]["accuracy"] is None or 0.0 <= m["judge"]["accuracy"] <= 1.0
    assert "generative_verifier" in m["calibration"]


def test_bad_verifier_config_names_the_field() -> None:
    with pytest.raises(
        ConfigError, match="evaluator.kind 'generative' needs evaluator.generative_verifier.enabled"
    ):
        load_config(overrides={"evaluator": {"kind": "generative"}})
    with pytest.raises(ConfigError, match="strategy.algorithm must be one of"):
        load_config(
            "grpo-zero", overrides={"evaluator": {"generative_verifier": {"enabled": True}}}
        )
    with pytest.raises(ConfigError, match="`evaluator.generative_verifier.threshold`: got 1.5"):
        load_config(overrides={"evaluator": {"generative_verifier": {"threshold": 1.5}}})
    with pytest.raises(ConfigError, match="`evaluator.generative_verifier.examples_per_round`"):
        load_config(overrides={"evaluator": {"generative_verifier": {"examples_per_round": 0}}})
