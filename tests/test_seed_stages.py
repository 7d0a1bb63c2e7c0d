"""The two-stage seed (`tasks.seed_first_levels`): a real short run, and its config errors."""

from __future__ import annotations

import json

import pytest

from reasonloop.config import ConfigError, load_config
from reasonloop.loop.run import run as run_loop
from tests.small_run import SMALL, nested


def _cfg(**extra):
    """The easy-to-hard preset at the test sizes, with dotted overrides as `--set` takes them."""
    return load_config("easy-to-hard", None, nested(SMALL | extra))


def test_first_stage_trains_the_easy_levels_then_all(tmp_path):
    cfg = _cfg(**{"rounds": 0, "tasks.seed_first_levels": [1], "tasks.seed_first_steps": 15})
    run_loop(cfg, tmp_path / "run", show_progress=False, log=lambda *a: None)
    info = json.loads((tmp_path / "run" / "manifest.json").read_text())["rounds"]["0"]
    train = info["phases"]["train"]
    assert train["steps"] == 15 + 40 and len(train["losses"]) == 55
    assert train["stage_steps"] == [15, 40]
    # Level 1 alone ("6+6=" -> "21"): every sequence of the first stage is short, so its 15
    # steps process fewer tokens than 15 steps of the mixed 1-3 digit stage that follows.
    one = _cfg(**{"rounds": 0, "tasks.seed_first_levels": [], "tasks.seed_first_steps": 0})
    run_loop(one, tmp_path / "one", show_progress=False, log=lambda *a: None)
    single = json.loads((tmp_path / "one" / "manifest.json").read_text())["rounds"]["0"]
    assert single["phases"]["train"]["steps"] == 40
    per_step_two = train["tokens"] / 55
    per_step_one = single["phases"]["train"]["tokens"] / 40
    assert per_step_two < per_step_one


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"tasks.seed_first_levels": [4], "tasks.seed_first_steps": 10},
            "must be among seed_levels",
        ),
        ({"tasks.seed_first_levels": [1], "tasks.seed_first_steps": 0}, "set both or neither"),
        ({"tasks.seed_first_levels": [], "tasks.seed_first_steps": 10}, "set both or neither"),
    ],
)
def test_bad_stage_settings_name_the_fields(extra, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**extra)
