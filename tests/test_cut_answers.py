"""A sample cut by `max_new_tokens` before it stopped has no final answer (`reasoner.
cut_has_no_answer`): real tiny-model sampling, real parsing."""

from __future__ import annotations

import random

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ModelConfig, ReasonerConfig, TrainConfig
from reasonloop.loop.heldout import evaluate
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.reasoner.solve import solve
from reasonloop.tasks.registry import get_family
from reasonloop.types import SFTExample, Task


def _model() -> TinyModel:
    return TinyModel.create(ModelConfig(dim=32, n_layers=1, n_heads=2, threads=1), 0)


def test_the_tiny_sampler_says_whether_a_row_stopped():
    model = _model()
    # One token of budget: a row stopped exactly when that token was a stop (empty text).
    comps = model.generate(["12+34="] * 64, 1, Sampling(temperature=1.0, max_new_tokens=1, seed=3))
    flags = [(cs[0].stopped, cs[0].text == "") for cs in comps]
    assert all(stopped == empty for stopped, empty in flags)
    assert {s for s, _ in flags} == {True, False}  # random weights: both happen


def test_cut_traces_neither_vote_nor_count_unless_asked():
    family = get_family("addition")
    rng = random.Random(0)
    tasks = [family.make(rng, 2) for _ in range(16)]
    model = _model()
    on = ReasonerConfig(samples=4, temperature=1.0, max_new_tokens=3, greedy_sample=False)
    traces = solve(model, family, tasks, on, seed=5, producer="t", rnd=1)
    cut = [t for t in traces if t.decoding.get("cut")]
    done = [t for t in traces if not t.decoding.get("cut")]
    assert cut and done
    assert all(t.answer is None for t in cut)
    assert all(t.answer == family.parse(t.text)[1] for t in done)
    # Every cut trace used the whole budget; finished ones counted their stop token.
    assert all(t.n_tokens == 3 for t in cut)
    off = on.model_copy(update={"cut_has_no_answer": False})
    kept = solve(model, family, tasks, off, seed=5, producer="t", rnd=1)
    assert [t.text for t in kept] == [t.text for t in traces]  # same samples
    assert any(t.answer is not None for t in kept if t.decoding.get("cut"))
    assert all(t.answer == family.parse(t.text)[1] for t in kept)


def test_padded_addition_knows_its_answer_length_from_the_prompt():
    rng = random.Random(1)
    for options, extra in (({}, 1), ({"pad_carry": True}, 0)):
        family = get_family("addition", **options)
        for level in (1, 3, 9):
            task = family.make(rng, level)
            assert family.answer_length(task) == len(task.answer) == level + 1
            assert len(task.prompt.split("+")[0]) + extra == level + 1
    assert get_family("addition", steps=True).answer_length(task) is None
    assert get_family("addition", pad=False).answer_length(task) is None
    family = get_family("addition")
    assert family.answer_length(Task("t", "addition", "12+345=", None)) is None
    assert get_family("chain_sum").answer_length(get_family("chain_sum").make(rng, 3)) is None


def test_samples_that_do_not_stop_are_cut_at_the_answer_length():
    family = get_family("addition")
    rng = random.Random(2)
    tasks = [family.make(rng, 2) for _ in range(32)]
    # A real model taught to write its answer and then run on: gold digits, then no stop.
    model = TinyModel.create(ModelConfig(dim=32, n_layers=2, n_heads=2, threads=1), 0)
    examples = [SFTExample(t.prompt, t.answer + "0" * 12 + "\n") for t in tasks]
    train_sft(model, examples, TrainConfig(lr=3e-3, steps=150, batch_size=32, warmup_steps=5), 0)
    cfg = ReasonerConfig(samples=2, temperature=0.5, max_new_tokens=6, greedy_sample=True)
    plain = solve(model, family, tasks, cfg, seed=1, producer="t", rnd=1)
    cut = [t for t in plain if t.decoding.get("cut")]
    assert len(cut) > len(plain) // 2 and all(t.answer is None for t in cut)
    on = cfg.model_copy(update={"cut_at_answer_length": True})
    fixed = solve(model, family, tasks, on, seed=1, producer="t", rnd=1)
    for before, after in zip(plain, fixed, strict=True):
        if not before.decoding.get("cut"):
            assert after == before  # a finished sample is left as it was
        elif after.decoding.get("truncated"):
            assert after.text == before.text[:3] + "\n" and after.answer == before.text[:3]
        else:  # its first 3 characters are no answer: as without the option
            assert after.answer is None and after.text == before.text
    truncated = [t for t in fixed if t.decoding.get("truncated")]
    assert len(truncated) > len(cut) // 2
    assert all(t.decoding["cut"] for t in truncated)


def test_heldout_reads_cut_samples_as_the_rounds_do():
    family = get_family("addition")
    rng = random.Random(3)
    tasks = [family.make(rng, 2) for _ in range(24)]
    model = TinyModel.create(ModelConfig(dim=48, n_layers=2, n_heads=2, threads=1), 0)
    examples = [SFTExample(t.prompt, family.completion(t)) for t in tasks]
    train_sft(model, examples, TrainConfig(lr=3e-3, steps=300, batch_size=24, warmup_steps=5), 0)
    # A budget of exactly the answer's 3 digits: no room for the stop, so every sample is cut
    # just after a complete-looking answer.
    loose = evaluate(model, family, tasks, 3, samples=4, seed=1)
    strict = evaluate(model, family, tasks, 3, samples=4, seed=1, cut_has_no_answer=True)
    assert loose["maj@4"] > 0.2  # the memorised sums, read off texts that never finished
    assert loose["pass@1"] > 0.2
    assert strict["pass@1"] == strict["maj@4"] == strict["pass@4"] == 0.0
