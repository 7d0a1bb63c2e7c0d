"""Step-level search on real things: stop-at-step generation of the tiny model, the step-scorer
helpers by hand, beam search finding the known best path of a toy step tree, and beam search and
MCTS on a briefly trained tiny model guided by the addition family's own step check."""

from __future__ import annotations

import random

import pytest
from toy_step_tree import BEST, PROMPT, propose, step_scorer

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ConfigError, ModelConfig, TrainConfig, load_config
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.reasoner.beam_search import beam_search
from reasonloop.reasoner.mcts import mcts, step_value
from reasonloop.reasoner.step_search import (
    check_step_scorer,
    is_finished,
    outcome_as_step_scorer,
    split_steps,
    step_proposer,
)
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.types import SFTExample

FAM = AdditionFamily(steps=True)


@pytest.fixture(scope="module")
def model() -> TinyModel:
    """A tiny model trained briefly on 1-2 digit addition with steps: it writes the format and
    gets some steps right and some wrong."""
    rng = random.Random(0)
    tasks = [FAM.make(rng, rng.choice([1, 2])) for _ in range(800)]
    examples = [SFTExample(prompt=t.prompt, completion=FAM.completion(t)) for t in tasks]
    m = TinyModel.create(ModelConfig(dim=48, n_layers=2, n_heads=2, max_seq_len=48), 0)
    train_sft(m, examples, TrainConfig(lr=6e-3, steps=400, batch_size=32, warmup_steps=20), 0)
    return m


def test_split_steps_and_finished_by_hand() -> None:
    assert split_steps("1+2+0=3;4+5+0=9;") == (["1+2+0=3", "4+5+0=9"], None)
    assert split_steps("1+2+0=3;4+5+0=9#390") == (["1+2+0=3", "4+5+0=9"], "390")
    assert split_steps("") == ([], None)
    assert split_steps("77") == ([], "77")  # a bare answer, as format.parse reads it
    assert split_steps("1;2#") == (["1", "2"], None)
    assert not is_finished("1+2+0=3;") and is_finished("1+2+0=3#30") and is_finished("")


def test_check_step_scorer_by_hand() -> None:
    task = FAM.from_operands(58, 67, 2)  # columns 8+7+0=15, 5+6+1=12; sum 125 -> "521"
    score = check_step_scorer(FAM, [task])
    p = [task.prompt] * 5
    got = score(
        p,
        [
            "8+7+0=15;",
            "8+7+0=14;5+6+1=12;",
            "8+7+0=15;5+6+1=12#521",
            "8+7+0=15;5+6+1=12#520",
            "521",
        ],
    )
    assert got == [[1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0]]
    with pytest.raises(ValueError, match="no task with prompt"):
        score(["9+9="], ["1;"])
    assert outcome_as_step_scorer(lambda ps, cs: [0.25] * len(cs))(p[:2], ["a;", "b"]) == [
        [0.25],
        [0.25],
    ]


def test_stop_at_step_generation_on_the_tiny_model(model: TinyModel) -> None:
    rng = random.Random(1)
    prompts = [FAM.make(rng, 2).prompt for _ in range(12)]
    step = Sampling(temperature=1.0, max_new_tokens=24, seed=0, stop_at_step=True)
    for p, comps in zip(prompts, model.generate(prompts, 4, step), strict=True):
        for c in comps:
            if c.text.endswith(";"):  # one step, its separator kept and counted
                assert c.text.count(";") == 1 and c.n_tokens == len(c.text)
            else:  # the final step and answer: ended at the newline (not in the text)
                assert ";" not in c.text and "\n" not in c.text
            # the log-probability is the model's own for exactly the tokens counted
            extra = "" if c.text.endswith(";") or c.n_tokens == len(c.text) else "\n"
            lp = float(model.logprobs([p], [c.text + extra])[0].sum())
            assert c.logprob == pytest.approx(lp, abs=1e-3)
    # greedy: a step is exactly the full greedy solution up to its first ";"
    greedy = Sampling(temperature=0.0, max_new_tokens=24)
    full = model.generate(prompts, 1, greedy)
    first = model.generate(
        prompts, 1, Sampling(temperature=0.0, max_new_tokens=24, stop_at_step=True)
    )
    for f, s in zip(full, first, strict=True):
        text = f[0].text
        assert s[0].text == (text[: text.index(";") + 1] if ";" in text else text)


def test_beam_search_finds_the_known_best_path_of_a_toy_tree() -> None:
    [wide] = beam_search([PROMPT], propose, step_scorer, beam_width=2, expansions=3, how="min")
    assert wide.text == BEST and wide.answer == "3" and wide.score == 0.5
    # round 1: one context x 3 samples ("a;", "b;", "c#1"); round 2: "a;" and "b;" x 3 each
    assert wide.samples == 3 + 6 and wide.tokens == (2 + 2 + 3) + (2 + 3 + 2) + (3 + 3 + 3)
    assert [t for t, _ in wide.finished] == ["c#1", "a;y#2", "b;z#3", "b;w#4"]
    # one beam follows the best single step into the trap: the search width is what finds BEST
    [narrow] = beam_search([PROMPT], propose, step_scorer, beam_width=1, expansions=3, how="min")
    assert narrow.text == "a;y#2"
    with pytest.raises(ValueError, match="beam_width"):
        beam_search([PROMPT], propose, step_scorer, beam_width=0)
    with pytest.raises(ValueError, match="aggregation"):
        beam_search([PROMPT], propose, step_scorer, how="max")


def test_oracle_guided_search_on_a_trained_tiny_model(model: TinyModel) -> None:
    """With the family's step check as the scorer, beam search returns a fully right trace
    whenever one was among its finished candidates (it returns the best-scored one, and only a
    fully right trace scores 1 under min): by construction, whatever the model samples. MCTS
    returns a finished node of its own tree and stays within its token budget (+ one
    expansion)."""
    rng = random.Random(2)
    tasks = [FAM.make(rng, 1 + i % 2) for i in range(16)]
    prompts = [t.prompt for t in tasks]
    oracle = check_step_scorer(FAM, tasks)
    sampling = Sampling(temperature=1.0, max_new_tokens=16, seed=4)
    found = beam_search(
        prompts, step_proposer(model, sampling), oracle, 2, 4, max_steps=6, how="min"
    )
    right_found = 0
    for t, r in zip(tasks, found, strict=True):
        assert r.samples > 0 and r.tokens >= r.samples
        fully_right = [x for x, s in r.finished if s == 1.0]
        for x, s in r.finished:  # the pool's scores are the oracle's, by its own rule
            steps, answer = split_steps(x)
            want = all(FAM.check_step(t, st) for st in steps) and FAM.verify(t, answer) == 1.0
            assert (s == 1.0) == want
        if fully_right:
            right_found += 1
            assert r.text is not None and FAM.verify(t, r.answer) == 1.0
            assert all(FAM.check_step(t, st) for st in split_steps(r.text)[0])
        elif r.text is not None:
            assert r.score < 1.0
    assert right_found > 0, "a partly trained model finds some fully right traces"

    budget = 60
    res = mcts(
        prompts[:8],
        step_proposer(model, sampling),
        step_value(oracle, "min"),
        simulations=50,
        expansions=3,
        max_steps=6,
        token_budget=budget,
    )
    for r in res:
        assert r.tokens < budget + 3 * 16  # stops at the first simulation past the budget
        if r.text is not None:
            tree = r.tree
            assert tree is not None and is_finished(r.text)
            assert r.text in {n.text for n in tree.nodes if n.terminal}


def test_search_config_errors_name_the_field() -> None:
    cfg = load_config("easy-to-hard")
    assert cfg.reasoner.search.method == "sample"  # the default adds no search
    with pytest.raises(ConfigError, match=r"reasoner\.search\.beam_width"):
        load_config(overrides={"reasoner": {"search": {"method": "beam", "beam_width": 3}}})
    with pytest.raises(ConfigError, match=r"evaluator\.reward_model\.enabled"):
        load_config(overrides={"reasoner": {"search": {"method": "mcts"}}})
    with pytest.raises(ConfigError, match="method"):
        load_config(overrides={"reasoner": {"search": {"method": "astar"}}})
    with pytest.raises(ConfigError, match="budget"):
        load_config(overrides={"reasoner": {"search": {"budget": 0}}})
    ok = load_config(
        overrides={
            "reasoner": {
                "search": {
                    "method": "beam",
                    "scorer": "check_step",
                    "beam_width": 2,
                    "expansions": 8,
                }
            }
        }
    )
    assert ok.reasoner.search.beam_width * ok.reasoner.search.expansions == 16


def test_heldout_search_metric_in_a_real_run(tmp_path) -> None:
    """`reasoner.search` adds `<method>@<budget>` (overall and by level) to a round's held-out
    metrics and its tokens to the eval's; the default config adds nothing."""
    import json

    from reasonloop.loop.run import run

    sizes = {
        "rounds": 0,
        "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "threads": 1},
        "seed_train": {"steps": 20, "batch_size": 16},
        "tasks": {
            "seed_levels": [1, 2],
            "seed_examples": 64,
            "heldout_levels": [1, 2],
            "heldout_per_level": 4,
        },
        "reasoner": {"max_new_tokens": 24, "batch_size": 64},
    }
    plain = run(
        load_config("step-dpo", overrides=sizes), tmp_path / "plain", False, lambda *_: None
    )
    searched = {"method": "mcts", "scorer": "check_step", "budget": 2, "expansions": 2}
    sizes["reasoner"] |= {"search": searched}
    run(load_config("step-dpo", overrides=sizes), tmp_path / "mcts", False, lambda *_: None)
    base = json.loads((tmp_path / "plain/rounds/r000/metrics.json").read_text())
    got = json.loads((tmp_path / "mcts/rounds/r000/metrics.json").read_text())
    searches = ("best_of_n@", "weighted_vote@", "beam@", "mcts@")
    assert not any(k.startswith(searches) for k in plain["rounds"][0]["heldout"])
    assert not any(k.startswith(searches) for k in base["heldout"])
    held = got["heldout"]
    assert 0.0 <= held["mcts@2"] <= 1.0 and set(held["mcts@2_by_level"]) == {"1", "2"}
    assert held["pass@1"] == base["heldout"]["pass@1"]  # same model, same greedy figure
