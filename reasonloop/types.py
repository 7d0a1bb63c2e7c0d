"""The records a round makes. Every record carries its lineage (who made it, from what, when).

Records are plain dataclasses so that they round-trip through Parquet with `to_row`/`from_row`;
nested fields (lists, dicts) are stored as JSON strings so any Parquet reader can open them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

Level = Literal["outcome", "step", "token"]


def stable_id(*parts: object) -> str:
    """A short content hash: the same inputs give the same id in every process and run."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8)
    return h.hexdigest()


class Record:
    """Parquet-friendly (de)serialisation shared by all records."""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)  # type: ignore[call-overload]
        for name in self.JSON_FIELDS:
            row[name] = json.dumps(row[name], sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in row.items() if k in names}
        for name in cls.JSON_FIELDS:
            if name in kwargs and isinstance(kwargs[name], str):
                kwargs[name] = json.loads(kwargs[name])
        return cls(**kwargs)


@dataclass
class Task(Record):
    """A problem to solve. `answer` is the gold answer when known (None for label-free tasks)."""

    id: str
    family: str
    prompt: str
    answer: str | None
    difficulty: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    """Generator parameters (digits, terms, ...) so the task can be re-made or evolved."""
    parents: list[str] = field(default_factory=list)
    """Ids of the tasks this one was evolved from."""
    made_by: str = ""
    """Generator, operator or model version that made it, e.g. `addition@gen` or `model:r3`."""
    round: int = 0
    split: str = "train"
    """`train` or `heldout`: held-out tasks are never trained on."""

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("params", "parents")


@dataclass
class Trace(Record):
    """One solution attempt: the completion text, its parsed steps and final answer."""

    id: str
    task_id: str
    text: str
    steps: list[str]
    answer: str | None
    """Final answer parsed from `text`; None when the text has no well-formed answer."""
    producer: str
    """Model version that wrote it, e.g. `reasoner:r2`, or `reference` for gold traces."""
    decoding: dict[str, Any] = field(default_factory=dict)
    """How it was sampled: temperature, top_k, top_p, sample index, search method, hint."""
    parent: str | None = None
    """The trace this one corrects or continues, if any."""
    round: int = 0
    n_tokens: int = 0

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("steps", "decoding")


@dataclass
class Judgement(Record):
    """An evaluator's verdict on a trace, at outcome, step or token level."""

    trace_id: str
    evaluator: str
    level: Level
    scores: list[float]
    """One score for outcome level, one per step or token otherwise."""
    verdict: bool | None = None
    critique: str = ""
    round: int = 0

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("scores",)


@dataclass
class Decision(Record):
    """The Post-Processor's keep/drop decision on a trace, with its reason."""

    trace_id: str
    kept: bool
    reason: str
    round: int = 0


@dataclass
class SFTExample(Record):
    """A behaviour-cloning example: the loss is taken on `completion` only."""

    prompt: str
    completion: str
    task_id: str = ""
    trace_id: str = ""
    round: int = 0


@dataclass
class PreferencePair(Record):
    """A preference pair at solution or step level (a shared `prompt` prefix)."""

    prompt: str
    chosen: str
    rejected: str
    level: Level = "outcome"
    task_id: str = ""
    round: int = 0
