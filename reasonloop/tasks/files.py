"""Tasks from files: JSONL or Parquet with `prompt` and `answer` columns.

Optional columns: `id` (default: a content hash of family and prompt), `family` (default
`file:<path>`), `difficulty` (default 0), and every other `Task` field (`params`, `parents`,
`made_by`, `round`, `split`), so a file written by `save_tasks` loads back unchanged. Columns
that are not `Task` fields are kept in `params` (a `solution` column, a source name...).
`answer` may be null for label-free tasks.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from reasonloop.evaluator import verifiers
from reasonloop.tasks.base import Family
from reasonloop.types import Task, stable_id

REQUIRED = ("prompt", "answer")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
_TASK_FIELDS = {f.name: f for f in fields(Task)}


def load_tasks(path: str | Path) -> list[Task]:
    """All tasks in a JSONL or Parquet file, in file order.

    Raises FileNotFoundError for a missing file and ValueError naming the file, the line (JSONL)
    or row (Parquet) and the field for anything malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    family = f"file:{path}"
    if path.suffix in JSONL_SUFFIXES:
        return [_task(row, family, f"{path}:{n}") for n, row in _jsonl_rows(path)]
    if path.suffix in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        _check_columns(table.column_names, str(path))
        return [_task(row, family, f"{path}: row {i}") for i, row in enumerate(table.to_pylist())]
    raise ValueError(
        f"task file {path}: unknown suffix {path.suffix!r}; expected .jsonl or .parquet"
    )


def save_tasks(tasks: list[Task], path: str | Path) -> None:
    """Write tasks to JSONL or Parquet (by suffix), atomically: a reader never sees half a file."""
    path = Path(path)
    if path.suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise ValueError(
            f"task file {path}: unknown suffix {path.suffix!r}; expected .jsonl or .parquet"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix in JSONL_SUFFIXES:
                for t in tasks:
                    f.write(json.dumps(asdict(t), ensure_ascii=False).encode() + b"\n")
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.Table.from_pylist([t.to_row() for t in tasks], schema=_parquet_schema())
                pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FileFamily(Family):
    """Serves the tasks of one file. Levels are the file's distinct `difficulty` values.

    `make(rng, level)` samples a task of that difficulty uniformly (with replacement: the
    Task Creator skips repeats). Answers are checked by `verifier`: `exact` (default), `numeric`
    or `math` (see `reasonloop.evaluator.verifiers`). Files hold no step traces, so `reference`
    gives no steps, only the answer.
    """

    name: ClassVar[str] = "file"
    VERIFIERS: ClassVar[dict[str, Any]] = {
        "exact": verifiers.exact,
        "numeric": verifiers.numeric,
        "math": verifiers.math,
    }

    def __init__(self, path: str | Path, verifier: str = "exact") -> None:
        if verifier not in self.VERIFIERS:
            raise ValueError(
                f"file family verifier must be one of {sorted(self.VERIFIERS)}, got {verifier!r}"
            )
        super().__init__(path=str(path), verifier=verifier)
        self.name = f"file:{path}"  # type: ignore[misc]  # one family per file
        self._verifier = self.VERIFIERS[verifier]
        self.by_level: dict[int, list[Task]] = {}
        for t in load_tasks(path):
            self.by_level.setdefault(t.difficulty, []).append(replace(t, family=self.name))
        if not self.by_level:
            raise ValueError(f"task file {path} holds no tasks")
        self.levels = tuple(sorted(self.by_level))  # type: ignore[misc]

    def make(self, rng: random.Random, level: int) -> Task:
        if level not in self.by_level:
            raise ValueError(
                f"{self.name}: no task has difficulty {level!r}; levels are {list(self.levels)}"
            )
        return replace(rng.choice(self.by_level[level]))

    def reference(self, task: Task) -> tuple[list[str], str]:
        if task.answer is None:
            raise ValueError(f"{self.name}: task {task.id} has no gold answer")
        return [], task.answer

    def verify(self, task: Task, answer: str | None) -> float:
        return float(self._verifier(answer, task.answer))

    def backward(self, task: Task, answer: str) -> list[Task]:
        """FOBAR's template questions (`evaluator/forward_backward.py`) for a numeric answer,
        when the file's answers are numbers (`numeric` or `math` verifier)."""
        if self.options["verifier"] == "exact":
            return []
        return self.template_backward(task, answer)


def _jsonl_rows(path: Path):
    """(line number, object) for each non-blank line."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno}); expected one JSON "
                    f"object per line with {' and '.join(map(repr, REQUIRED))}"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            _check_columns(row.keys(), f"{path}:{n}")
            yield n, row


def _check_columns(names, where: str) -> None:
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {', '.join(map(repr, missing))}; found {sorted(names)}"
        )


def _task(row: dict[str, Any], default_family: str, where: str) -> Task:
    """A Task from one row, with its types checked; `where` locates the row in errors."""

    def bad(field: str, expected: str) -> ValueError:
        value = repr(row[field])
        value = value if len(value) <= 60 else value[:57] + "..."
        return ValueError(f"{where}: field {field!r}: expected {expected}, got {value}")

    prompt, answer = row["prompt"], row["answer"]
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt", "a non-empty string")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float | None):
        raise bad("answer", "a string, a number or null")
    if isinstance(answer, int | float):
        answer = str(answer)  # JSONL writers often store numeric answers as numbers
    kwargs: dict[str, Any] = {"prompt": prompt, "answer": answer}
    extra: dict[str, Any] = {}
    for key, value in row.items():
        if key in REQUIRED or value is None:
            continue
        if key not in _TASK_FIELDS:
            # params must survive JSON (Parquet rows store them so): dates etc. become text
            extra[key] = json.loads(json.dumps(value, default=str))
            continue
        if key in ("params", "parents") and isinstance(value, str):  # Parquet stores them as JSON
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad(key, "JSON text") from None
        expected = {"difficulty": int, "round": int, "params": dict, "parents": list}.get(key, str)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise bad(
                key,
                {int: "an integer", dict: "an object", list: "a list", str: "a string"}[expected],
            )
        kwargs[key] = value
    kwargs.setdefault("family", default_family)
    kwargs.setdefault("id", stable_id(kwargs["family"], prompt))
    if extra:
        kwargs["params"] = {**extra, **kwargs.get("params", {})}
    return Task(**kwargs)


def _parquet_schema():
    import pyarrow as pa

    types = {"difficulty": pa.int64(), "round": pa.int64()}
    return pa.schema([(name, types.get(name, pa.string())) for name in _TASK_FIELDS])
