"""benchmarks/methods.py's testbeds: each one's changes give a valid config under every preset
the benchmark runs, and the sum_above testbeds' longest gold solutions fit the model's context
and the token and character limits (a solution cut short would never verify)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reasonloop.config import RunConfig, load_config
from reasonloop.tasks.families.sum_above import ABOVE, BELOW
from reasonloop.tasks.registry import get_family

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from methods import BASELINES, COMMON, PRESETS, TESTBEDS, row_preset, with_changes  # noqa: E402


def _configs(testbed: str) -> Iterator[tuple[str, RunConfig]]:
    """(row name, its config on `testbed`) for every preset and baseline the benchmark runs, and
    prm-cooperative."""
    common = with_changes(COMMON, TESTBEDS[testbed])
    for name in [*PRESETS, "prm-cooperative"]:
        preset, overrides = row_preset(name, common)
        yield name, load_config(preset, overrides={**overrides, "rounds": 1, "seed": 0})


@pytest.mark.parametrize("testbed", sorted(TESTBEDS))
def test_every_preset_and_baseline_loads_on_every_testbed(testbed: str) -> None:
    common = with_changes(COMMON, TESTBEDS[testbed])
    for name, cfg in _configs(testbed):
        assert cfg.tasks.family == common["tasks"]["family"], name
        assert cfg.tasks.heldout_levels == common["tasks"]["heldout_levels"], name
        assert cfg.preset == (BASELINES[name][0] if name in BASELINES else name)


def test_the_seed_replay_baseline_is_rft_with_one_task_a_round() -> None:
    common = with_changes(COMMON, TESTBEDS["addition"])
    rft = load_config("rft", overrides={**common, "rounds": 1, "seed": 0})
    preset, overrides = row_preset("seed-replay", common)
    replay = load_config(preset, overrides={**overrides, "rounds": 1, "seed": 0})
    assert replay.creator.per_round == 1 and rft.creator.per_round == 600
    assert replay.strategy == rft.strategy and replay.strategy.replay_seed > 0
    assert replay.model_dump(exclude={"creator"}) == rft.model_dump(exclude={"creator"})
    assert common["creator"]["per_round"] == 600  # the baseline's change did not leak


@pytest.mark.parametrize("testbed", [t for t in sorted(TESTBEDS) if t.startswith("sum_above")])
def test_sum_above_solutions_fit_the_context_and_limits(testbed: str) -> None:
    for preset, cfg in _configs(testbed):
        family = get_family(cfg.tasks.family, **cfg.tasks.options)  # each preset's answer format
        levels = set(cfg.tasks.seed_levels) | set(cfg.tasks.heldout_levels)
        for level in levels:
            for bound_offset in (-BELOW, ABOVE):  # the longest bounds, either answer
                terms = [9] * level
                task = family.from_terms(terms, sum(terms) + bound_offset)
                completion = family.completion(task)
                assert len(completion) <= cfg.reasoner.max_new_tokens, (preset, completion)
                assert len(completion) <= cfg.postprocess.max_chars, (preset, completion)
                # One token a character, plus beginning and end of sequence.
                assert len(task.prompt) + len(completion) + 2 <= cfg.model.max_seq_len
