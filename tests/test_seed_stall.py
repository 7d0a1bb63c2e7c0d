"""`tasks.seed_stall_steps`: a seed attempt still on its loss plateau stops early and starts over.
The criterion on hand-built loss curves, and real short runs (one that stalls, one that learns)."""

from __future__ import annotations

import json

import pytest

from reasonloop.config import ConfigError, load_config
from reasonloop.loop.run import run as run_loop
from reasonloop.loop.seed_stall import SeedStalled, plateau, stalled, watch
from tests.small_run import SMALL, nested

ONE_DIGIT = {
    "tasks.seed_levels": [1],
    "tasks.heldout_levels": [1, 2],
    "seed_train.steps": 150,
}


def _cfg(**extra):
    return load_config("easy-to-hard", None, nested(SMALL | ONE_DIGIT | extra))


def test_plateau_means_the_second_and_fourth_quarters():
    losses = [9.0] * 10 + [2.0] * 10 + [5.0] * 10 + [1.0] * 10
    assert plateau(losses, 40) == (2.0, 1.0)
    assert not stalled(losses, 40, 0.2)  # 1.0 is 50% below 2.0
    assert stalled(losses, 40, 0.6)  # ... but not 60%
    flat = [3.0] * 10 + [1.45] * 10 + [1.0] * 10 + [1.41] * 10  # seed 2's plateau, scaled
    assert stalled(flat, 40, 0.2)
    with pytest.raises(ValueError, match="needs 40 losses, got 39"):
        plateau(losses[:39], 40)


def test_watch_raises_at_the_step_with_the_losses_so_far():
    seen: list[int] = []
    step = watch(lambda s: seen.append(s["step"]), 8, 0.2)
    for i in range(7):
        step({"step": i, "loss": 1.0, "tokens": 10 + i})
    with pytest.raises(SeedStalled) as e:
        step({"step": 7, "loss": 1.0, "tokens": 17})
    assert e.value.step == 8 and e.value.losses == [1.0] * 8 and seen == list(range(8))
    assert e.value.tokens == sum(range(10, 18))  # what the stalled attempt trained on
    # A falling loss passes the check and the callback goes on.
    seen.clear()
    step = watch(lambda s: seen.append(s["step"]), 8, 0.2)
    for i in range(20):
        step({"step": i, "loss": 2.0 - 0.1 * i})
    assert seen == list(range(20))


def test_a_stalled_seed_stops_early_and_starts_over(tmp_path):
    # At lr 1e-9 the loss cannot fall: the first attempt stops at step 40, the last trains on.
    cfg = _cfg(
        **{
            "rounds": 0,
            "seed_train.lr": 1e-9,
            "tasks.seed_check": 1.0,
            "tasks.seed_restarts": 1,
            "tasks.seed_stall_steps": 40,
        }
    )
    lines: list[str] = []
    run_loop(cfg, tmp_path / "run", show_progress=False, log=lines.append)
    train = json.loads((tmp_path / "run" / "manifest.json").read_text())["rounds"]["0"]
    info = train["phases"]["train"]
    assert info["seed_stalled"] == [0] and len(info["seed_checks"]) == 2
    assert len(info["losses"]) == 150  # the kept attempt is the last, trained to the end
    assert any("seed attempt 1: seed loss" in ln and "step 40" in ln for ln in lines)
    assert sum("stopped at step 40 on its loss plateau" in ln for ln in lines) == 1


def test_a_learning_seed_does_not_stall(tmp_path):
    cfg = _cfg(
        **{
            "rounds": 0,
            "tasks.seed_check": 0.001,
            "tasks.seed_restarts": 1,
            "tasks.seed_stall_steps": 40,
        }
    )
    lines: list[str] = []
    run_loop(cfg, tmp_path / "run", show_progress=False, log=lines.append)
    info = json.loads((tmp_path / "run" / "manifest.json").read_text())["rounds"]["0"]["phases"][
        "train"
    ]
    assert "seed_stalled" not in info and len(info["seed_checks"]) == 1
    assert len(info["losses"]) == 150 and not any("starting over" in ln for ln in lines)


def test_stall_needs_restarts():
    with pytest.raises(ConfigError, match="seed_stall_steps .* needs seed_restarts"):
        _cfg(**{"tasks.seed_stall_steps": 40})
    with pytest.raises(ConfigError, match="seed_stall_steps must be 0"):
        _cfg(**{"tasks.seed_check": 0.5, "tasks.seed_restarts": 1, "tasks.seed_stall_steps": 2})
