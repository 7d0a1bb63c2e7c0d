"""A sample cut by `max_new_tokens` before it stopped has no final answer (`reasoner.
cut_has_no_answer`): real tiny-model sampling, real parsing."""

from __future__ import annotations

import random

from reasonloop.config import ModelConfig, ReasonerConfig
from reasonloop.models.base import Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.reasoner.solve import solve
from reasonloop.tasks.registry import get_family


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
