"""A packed seed: gold examples written after another seed problem, each problem of a training
sequence shifted by its own abacus offset, and the loop's round 0 that trains on them."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from reasonloop.algorithms.seed_packing import packed
from reasonloop.config import ModelConfig, load_config
from reasonloop.loop.run import run
from reasonloop.loop.store import read_records
from reasonloop.models.tiny import TinyModel, digit_runs
from reasonloop.models.tokenizer import BOS_ID, CharTokenizer
from reasonloop.types import SFTExample, Task


def _examples(n: int) -> list[SFTExample]:
    return [
        SFTExample(f"{a}+{a + 1}=", f"{2 * a + 1}\n", task_id=f"t{a}", trace_id=f"x{a}", round=0)
        for a in range(n)
    ]


def test_packed_puts_another_whole_problem_before_and_keeps_the_lineage():
    data = _examples(40)
    texts = {ex.prompt + ex.completion for ex in data}
    out = packed(data, 1.0, random.Random(0))
    assert len(out) == len(data)
    for ex, orig in zip(out, data, strict=True):
        assert (ex.completion, ex.task_id, ex.trace_id, ex.round) == (
            orig.completion,
            orig.task_id,
            orig.trace_id,
            orig.round,
        )
        first, second = ex.prompt.split("\n")
        assert second == orig.prompt and first + "\n" in texts
    half = packed(data, 0.5, random.Random(0))
    assert 8 <= sum("\n" in ex.prompt for ex in half) <= 32
    assert packed(data, 0.0, random.Random(0)) == data
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\], got 1.5"):
        packed(data, 1.5, random.Random(0))


@pytest.mark.parametrize("per_problem", [True, False])
def test_each_problem_of_a_sequence_draws_its_own_offset(per_problem):
    cfg = ModelConfig(
        dim=32,
        n_layers=1,
        n_heads=4,
        max_seq_len=64,
        rope_theta=math.inf,
        abacus=32,
        abacus_offset=10,
        abacus_offset_per_problem=per_problem,
    )
    module = TinyModel.create(cfg, 0).module.train()
    text = "12+345=753\n6789+1=0986\n"
    ids = torch.tensor([[BOS_ID, *CharTokenizer().encode(text)]] * 200)
    runs = digit_runs(ids, -1)
    torch.manual_seed(0)
    shifted = module.abacus_index(runs, ids)
    shift = shifted - runs
    digit = runs > 0
    cut = text.index("\n") + 1 + 1  # tokens of the first problem, with BOS and its newline
    first, second = shift[:, :cut][digit[:, :cut]], shift[:, cut:][digit[:, cut:]]
    first, second = first.view(200, -1), second.view(200, -1)
    # One offset per problem in each row: constant over its digits, drawn from 0..10.
    assert (first == first[:, :1]).all() and (second == second[:, :1]).all()
    assert set(first[:, 0].tolist()) == set(range(11))
    differs = (first[:, 0] != second[:, 0]).float().mean().item()
    if per_problem:
        assert differs > 0.8  # independent draws agree about 1 time in 11
    else:
        assert differs == 0
    assert (shifted[~digit] == 0).all()
    module.eval()  # no offsets at inference
    assert torch.equal(module.abacus_index(runs, ids), runs)


def test_a_packed_seed_in_the_loop(tmp_path):
    cfg = load_config(
        "easy-to-hard",
        overrides={
            "rounds": 0,
            "seed": 3,
            "model": {
                "dim": 32,
                "n_layers": 2,
                "n_heads": 2,
                "threads": 1,
                "abacus_offset_per_problem": True,
            },
            "seed_train": {"steps": 30, "batch_size": 16},
            "tasks": {
                "options": {"pad_carry": True},
                "seed_levels": [1, 2, 3],
                "seed_examples": 300,
                "seed_check": 0.0,
                "seed_restarts": 0,
                "seed_pack": 0.5,
                "heldout_levels": [1, 4],
                "heldout_per_level": 5,
            },
        },
    )
    out = tmp_path / "run"
    summary = run(cfg, out, show_progress=False, log=lambda *_: None)
    assert summary["complete"] and summary["rounds"][0]["heldout"]["by_level"]
    tasks = {t.id: t for t in read_records(out / "rounds/r000/tasks.parquet", Task)}
    examples = read_records(out / "rounds/r000/sft.parquet", SFTExample)
    two = [ex for ex in examples if ex.prompt.count("=") == 2]
    assert 0.35 < len(two) / len(examples) < 0.65
    whole = {tasks[ex.task_id].prompt + ex.completion.rstrip("\n") for ex in examples}
    for ex in two:
        first, second = ex.prompt.split("\n")
        # The second problem is the example's own task, the first another seed example whole.
        assert second == tasks[ex.task_id].prompt and first in whole
        assert ex.completion.rstrip("\n") == tasks[ex.task_id].answer
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rounds"]["0"]["phases"]["train"]
