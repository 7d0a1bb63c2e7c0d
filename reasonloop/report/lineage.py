"""A run directory read back for people: each round's tasks joined with their traces, the
judgements of each trace and the keep/drop decision on it, plus the per-round metrics.

`reasonloop report` and `reasonloop inspect` both read a run through `load_run`, so they show
the same lineage. A run still in progress is readable: a phase that has not finished has no
file yet and simply shows as empty.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reasonloop.loop.store import CorruptRunError, RunDir, read_records
from reasonloop.types import Decision, Judgement, Task, Trace

_ROUND_DIR = re.compile(r"^r(\d+)$")


class NotARunError(ValueError):
    """The path is missing or is not a reasonloop run directory; the message names it."""


@dataclass
class TraceView:
    trace: Trace
    judgements: list[Judgement] = field(default_factory=list)
    decision: Decision | None = None


@dataclass
class TaskView:
    """One task as one round saw it: the same task id may come back in a later round."""

    task: Task
    traces: list[TraceView] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return sum(1 for t in self.traces if t.decision is not None and t.decision.kept)


@dataclass
class RoundRecords:
    round: int
    tasks: list[Task] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def views(self) -> list[TaskView]:
        """Tasks in file order, each with its traces, judgements and decisions."""
        by_trace: dict[str, list[Judgement]] = defaultdict(list)
        for j in self.judgements:
            by_trace[j.trace_id].append(j)
        decided = {d.trace_id: d for d in self.decisions}
        per_task: dict[str, list[TraceView]] = defaultdict(list)
        for t in self.traces:
            per_task[t.task_id].append(TraceView(t, by_trace.get(t.id, []), decided.get(t.id)))
        return [TaskView(task, per_task.get(task.id, [])) for task in self.tasks]

    def dropped(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for d in self.decisions:
            if not d.kept:
                out[d.reason] += 1
        return dict(out)


@dataclass
class Run:
    root: Path
    config: dict[str, Any]
    manifest: dict[str, Any]
    summary: dict[str, Any] | None
    rounds: dict[int, RoundRecords]
    metrics: dict[int, dict[str, Any]]
    """Per-round metrics: summary.json's entry when the run finished, else metrics.json."""

    def views(self, r: int) -> list[TaskView]:
        return self.rounds[r].views() if r in self.rounds else []

    def task_ids(self) -> set[str]:
        return {t.id for rr in self.rounds.values() for t in rr.tasks}

    def match(self, prefix: str) -> list[str]:
        """Task ids starting with `prefix` (an exact id always wins over longer ones)."""
        ids = self.task_ids()
        if prefix in ids:
            return [prefix]
        return sorted(i for i in ids if i.startswith(prefix))

    def lineage(self, task_id: str) -> list[tuple[int, TaskView]]:
        """(round, view) for every round that saw the task, oldest first: a review task comes
        back in later rounds with new traces, while its `round` stays the one that made it."""
        out = []
        for r in sorted(self.rounds):
            if any(t.id == task_id for t in self.rounds[r].tasks):
                out.extend((r, v) for v in self.rounds[r].views() if v.task.id == task_id)
        return out


def check_run_dir(path: str | Path) -> Path:
    root = Path(path)
    if not root.exists():
        raise NotARunError(f"{root}: no such run directory")
    if not root.is_dir():
        raise NotARunError(f"{root}: not a directory")
    if not (root / "manifest.json").exists() and not (root / "config.yaml").exists():
        raise NotARunError(
            f"{root}: not a run directory (no manifest.json or config.yaml; "
            "`reasonloop run --out DIR` makes one)"
        )
    return root


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise CorruptRunError(f"{path}: not valid JSON ({e})") from e


def _records(path: Path, cls: type) -> list:
    try:
        return read_records(path, cls)
    except FileNotFoundError:
        return []


def round_numbers(rd: RunDir) -> list[int]:
    found = {int(k) for k in rd.manifest().get("rounds", {})}
    if (rd.root / "rounds").is_dir():
        for d in (rd.root / "rounds").iterdir():
            m = _ROUND_DIR.match(d.name)
            if m and d.is_dir():
                found.add(int(m.group(1)))
    return sorted(found)


def load_run(path: str | Path) -> Run:
    rd = RunDir(check_run_dir(path))
    cfg_path = rd.root / "config.yaml"
    try:
        config = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.exists() else {}
    except yaml.YAMLError as e:
        raise CorruptRunError(f"{cfg_path}: not valid YAML ({e})") from e
    summary = _read_json(rd.root / "summary.json")
    from_summary = {m["round"]: m for m in (summary or {}).get("rounds", [])}
    rounds: dict[int, RoundRecords] = {}
    metrics: dict[int, dict[str, Any]] = {}
    for r in round_numbers(rd):
        d = rd.round_dir(r)
        rounds[r] = RoundRecords(
            r,
            _records(d / "tasks.parquet", Task),
            _records(d / "traces.parquet", Trace),
            _records(d / "judgements.parquet", Judgement),
            _records(d / "decisions.parquet", Decision),
        )
        m = from_summary.get(r) or _read_json(d / "metrics.json")
        if m is not None:
            metrics[r] = m
    return Run(rd.root, config, rd.manifest(), summary, rounds, metrics)
