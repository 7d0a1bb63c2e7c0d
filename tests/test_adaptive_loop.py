"""The adaptive-curriculum preset in the real loop at its smallest: levels chosen from measured
success, evolved tasks with stored parents and re-derived answers, diversity per round."""

from __future__ import annotations

import json

from reasonloop.config import load_config
from reasonloop.loop.run import run
from reasonloop.loop.store import read_records
from reasonloop.tasks.registry import get_family
from reasonloop.types import Task


def test_adaptive_curriculum_run(tmp_path):
    cfg = load_config(
        "adaptive-curriculum",
        overrides={
            "rounds": 3,
            "seed": 1,
            "model": {"dim": 32, "n_layers": 2, "n_heads": 2, "threads": 1},
            "seed_train": {"steps": 60, "batch_size": 32},
            "train": {"steps": 4, "batch_size": 16},
            "tasks": {
                "seed_levels": [1, 2],
                "seed_examples": 200,
                "heldout_levels": [1, 2, 3],
                "heldout_per_level": 6,
            },
            "creator": {"per_round": 40, "evolve_share": 0.5},
            "reasoner": {"samples": 2, "batch_size": 64},
            "strategy": {"replay_seed": 20},
        },
    )
    out = tmp_path / "run"
    summary = run(cfg, out, show_progress=False, log=lambda *_: None)
    assert summary["complete"]
    manifest = json.loads((out / "manifest.json").read_text())
    family = get_family("addition")
    for m in summary["rounds"]:
        div = m["diversity"]
        assert 0 < div["distinct"] <= 1 and 0 <= div["jaccard_distance"] <= 1
    for r in (1, 2, 3):
        info = manifest["rounds"][str(r)]["phases"]["propose"]
        cur = info["curriculum"]
        # The propose phase draws at the level the curriculum chose.
        assert info["frontier"] == cur["level"] and info["levels"] == [cur["level"]]
        process = manifest["rounds"][str(r)]["phases"]["process"]
        assert process["success_by_level"], "sampled rounds measure success per level"
        tasks = read_records(out / f"rounds/r{r:03d}/tasks.parquet", Task)
        previous = {
            t.id: t
            for q in range(r)
            for t in read_records(out / f"rounds/r{q:03d}/tasks.parquet", Task)
        }
        lo, hi = min(info["levels"]) - 1, max(info["levels"])
        near = any(lo <= t.difficulty <= hi for t in previous.values())
        evolved = [t for t in tasks if t.made_by.startswith("evolve:")]
        assert evolved and sum(info["evolution"]["evolved"].values()) == len(evolved)
        for t in evolved:
            # The parent is a stored task of an earlier round, at or one below the round's level.
            assert t.parents and t.parents[0] in previous and t.round == r
            assert not near or lo <= previous[t.parents[0]].difficulty <= hi
            assert family.verify(t, family.reference(t)[1]) == 1.0
        assert len({t.prompt for t in tasks}) == len(tasks)
    # Round 1 has no measurement (round 0 is gold reference traces); later rounds do.
    assert (
        "no success measured" in manifest["rounds"]["1"]["phases"]["propose"]["curriculum"]["why"]
    )
    assert manifest["rounds"]["2"]["phases"]["propose"]["curriculum"]["success"]
