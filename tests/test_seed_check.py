"""`tasks.seed_check` / `seed_restarts`: a seed that misses the bar starts over from fresh
weights, and the run keeps the better attempt. A real short run; and the config errors."""

from __future__ import annotations

import json

import pytest

from reasonloop.cli import _weak_seed
from reasonloop.config import ConfigError, load_config
from reasonloop.loop.heldout import evaluate
from reasonloop.loop.run import run as run_loop
from reasonloop.loop.store import RunDir, read_records
from reasonloop.models import load_model
from reasonloop.tasks.registry import get_family
from reasonloop.types import Task
from tests.small_run import SMALL, nested

ONE_DIGIT = {
    "tasks.seed_levels": [1],
    "tasks.heldout_levels": [1, 2],
    "seed_train.steps": 150,
}


def _cfg(**extra):
    return load_config("easy-to-hard", None, nested(SMALL | extra))


def test_a_seed_below_the_bar_starts_over_and_the_better_attempt_is_kept(tmp_path):
    # 150 steps of a 2-layer dim-32 model get some 1-digit sums right, never all of them.
    cfg = _cfg(**{"rounds": 0, "tasks.seed_check": 1.0, "tasks.seed_restarts": 2, **ONE_DIGIT})
    lines: list[str] = []
    run_loop(cfg, tmp_path / "run", show_progress=False, log=lines.append)
    train = json.loads((tmp_path / "run" / "manifest.json").read_text())["rounds"]["0"]
    checks = train["phases"]["train"]["seed_checks"]
    assert len(checks) == 3 and all(0.0 <= c < 1.0 for c in checks)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"][0]["train"]["seed_checks"] == checks
    assert len(train["phases"]["train"]["losses"]) == 150  # the kept attempt's, not all three
    assert sum("starting over from init seed" in ln for ln in lines) == 2
    assert any(ln.startswith("warning: the seed reached") for ln in lines)
    # The saved checkpoint is the best attempt: scoring it on the same probe gives max(checks).
    rd = RunDir(tmp_path / "run")
    tasks = read_records(rd.round_dir(0) / "tasks.parquet", Task)
    probe: list[Task] = []
    for lv in sorted(cfg.tasks.seed_levels):
        probe += [t for t in tasks if t.difficulty == lv][:50]
    model = load_model(cfg.model, rd.checkpoint(0))
    family = get_family(cfg.tasks.family)
    got = evaluate(model, family, probe, cfg.reasoner.max_new_tokens)["pass@1"]
    assert got == pytest.approx(max(checks))
    # The attempts differ (fresh weights each time), so "keep the best" had something to choose.
    assert len(set(checks)) > 1


def test_a_seed_that_clears_the_bar_trains_once(tmp_path):
    cfg = _cfg(**{"rounds": 0, "tasks.seed_check": 0.001, "tasks.seed_restarts": 2, **ONE_DIGIT})
    lines: list[str] = []
    run_loop(cfg, tmp_path / "run", show_progress=False, log=lines.append)
    train = json.loads((tmp_path / "run" / "manifest.json").read_text())["rounds"]["0"]
    checks = train["phases"]["train"]["seed_checks"]
    assert len(checks) == 1 and checks[0] >= 0.001
    assert not any("starting over" in ln for ln in lines)


def test_restarts_need_a_check():
    with pytest.raises(ConfigError, match="seed_restarts .* needs seed_check"):
        _cfg(**{"tasks.seed_check": 0.0, "tasks.seed_restarts": 1})


def test_weak_seed_names_the_levels_under_the_bar():
    summary = {"rounds": [{"round": 0, "heldout": {"by_level": {"1": 1.0, "2": 0.5, "6": 0.1}}}]}
    assert _weak_seed(summary, [1, 2], 0.9) == {2: 0.5}
    assert _weak_seed(summary, [1, 2], 0.0) == {}  # no check asked
    assert _weak_seed({"rounds": [{"round": 3, "heldout": {}}]}, [1, 2], 0.9) == {}
