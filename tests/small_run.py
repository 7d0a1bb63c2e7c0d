"""Real short runs for the report and inspect tests: the tiny model at its smallest, a few
seconds of CPU. Built once per pytest session (kept in the session's base temp dir) and copied
by tests that change records."""

from __future__ import annotations

import shutil
from pathlib import Path

from reasonloop.config import load_config
from reasonloop.loop.run import run as run_loop
from reasonloop.loop.store import read_records, write_records
from reasonloop.types import Judgement, Task, Trace

# The same sizes as test_resume's run.
SMALL = {
    "model.dim": 32,
    "model.n_layers": 2,
    "model.n_heads": 2,
    "seed_train.steps": 40,
    "train.steps": 12,
    "train.batch_size": 16,
    "tasks.seed_examples": 200,
    "tasks.heldout_per_level": 8,
    "tasks.seed_levels": [1, 2, 3],
    "tasks.heldout_levels": [1, 2, 3, 4],
    "creator.per_round": 24,
    "reasoner.samples": 3,
    "reasoner.batch_size": 32,
    "model.threads": 1,
    # A 40-step seed cannot pass the preset's check, and a restart would double round 0
    # (tests/test_seed_check.py covers it; test_resume runs with it on).
    "tasks.seed_check": 0,
    "tasks.seed_restarts": 0,
}

# Smaller still, for tests that only need some finished rounds (bad inputs, trackers): seconds.
TINIEST = {
    "model.dim": 32,
    "model.n_layers": 2,
    "model.n_heads": 2,
    "model.threads": 1,
    "seed_train.steps": 20,
    "train.steps": 4,
    "train.batch_size": 16,
    "tasks.seed_examples": 64,
    "tasks.heldout_per_level": 4,
    "tasks.seed_levels": "[1,2]",
    "tasks.heldout_levels": "[1,2,3]",
    "creator.per_round": 8,
    "reasoner.samples": 2,
    "tasks.seed_check": 0,
    "tasks.seed_restarts": 0,
}


def nested(flat: dict) -> dict:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`: dotted overrides as `--set` takes them, for load_config."""
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def cli_sets(sizes: dict) -> list[str]:
    """`--set FIELD=VALUE` arguments for `reasonloop run`."""
    return [a for k, v in sizes.items() for a in ("--set", f"{k}={v}")]


# GRPO with every group trained (no dynamic sampling) and a KL term, so that the per-step
# reward-side curves (KL, clip fraction) exist even though this tiny model is always wrong.
GRPO = {
    "seed_train.steps": 10,
    "tasks.seed_examples": 50,
    "tasks.heldout_per_level": 4,
    "tasks.seed_levels": [1, 2],
    "tasks.heldout_levels": [1, 2, 3],
    "creator.per_round": 8,
    "reasoner.samples": 2,
    "train.steps": 4,
    "strategy.rl.dynamic_sampling": False,
    "strategy.rl.kl_beta": 0.05,
}

INJECTION = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"


def small_run(
    tmp_path_factory, preset: str = "easy-to-hard", rounds: int = 2, extra: dict | None = None
) -> Path:
    """A finished run of `preset`, made in this process (torch is imported once per session)
    with the real loop, the same as `reasonloop run --set ...` would make it."""
    out = tmp_path_factory.getbasetemp() / f"small-{preset}-r{rounds}" / "run"
    if (out / "summary.json").exists():
        return out
    overrides = {"rounds": rounds, "seed": 3} | nested(SMALL | (extra or {}))
    summary = run_loop(
        load_config(preset, None, overrides), out, show_progress=False, log=lambda _: None
    )
    assert summary["complete"]
    return out


def copy_run(src: Path, dst: Path) -> Path:
    # Checkpoints are not read by report or inspect; skipping them keeps the copy cheap.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def inject(run: Path, r: int, text: str) -> tuple[Task, Trace]:
    """Give round r's first task the prompt `text`, its first trace the text and answer
    `text`, and that trace's judgements the critique `text`, through the record files."""
    d = run / "rounds" / f"r{r:03d}"
    tasks = read_records(d / "tasks.parquet", Task)
    traces = read_records(d / "traces.parquet", Trace)
    judgements = read_records(d / "judgements.parquet", Judgement)
    task = tasks[0]
    trace = next(t for t in traces if t.task_id == task.id)
    task.prompt = text
    trace.text = text
    trace.answer = text
    trace.steps = [text, "ok"]
    for j in judgements:
        if j.trace_id == trace.id:
            j.critique = text
    write_records(d / "tasks.parquet", tasks, Task)
    write_records(d / "traces.parquet", traces, Trace)
    write_records(d / "judgements.parquet", judgements, Judgement)
    return task, trace
