"""A run directory on disk. Every file is written atomically (temp file, fsync, rename), so a
run killed at any moment leaves either the old file or the new one, never half of one.

Layout::

    RUN/config.yaml            the resolved config (what `--config` would reproduce)
    RUN/manifest.json          which rounds and phases are finished
    RUN/heldout.parquet        the fixed held-out tasks
    RUN/rounds/rNNN/*.parquet  tasks, traces, judgements, decisions, sft examples
    RUN/rounds/rNNN/metrics.json
    RUN/checkpoints/rNNN/      model weights (safetensors) and config after round N
    RUN/summary.json, RUN/heldout.png
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from reasonloop.loop import faults
from reasonloop.types import Record

R = TypeVar("R", bound=Record)


class CorruptRunError(RuntimeError):
    """A file of the run directory cannot be read back; the message names it."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        faults.hit("write")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_records(path: Path, records: Iterable[Record], cls: type[Record]) -> None:
    rows = [r.to_row() for r in records]
    if rows:
        table = pa.Table.from_pylist(rows)
    else:
        # An empty round still writes its file, with the columns, so "done" is visible.
        names = [f for f in cls.__dataclass_fields__]  # type: ignore[attr-defined]
        table = pa.table({n: pa.array([], type=pa.string()) for n in names})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_records(path: Path, cls: type[R]) -> list[R]:
    try:
        rows = pq.read_table(path).to_pylist()
    except FileNotFoundError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise CorruptRunError(f"{path}: cannot read Parquet ({e})") from e
    return [cls.from_row(r) for r in rows]  # type: ignore[misc]


def atomic_replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written directory into place; an older `dst` is swapped out, then removed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    if old.exists():
        shutil.rmtree(old)


class RunDir:
    """Paths and the manifest of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def round_dir(self, r: int) -> Path:
        return self.root / "rounds" / f"r{r:03d}"

    def checkpoint(self, r: int) -> Path:
        return self.root / "checkpoints" / f"r{r:03d}"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise CorruptRunError(f"{self.manifest_path}: not valid JSON ({e})") from e

    def trained_rounds(self) -> list[int]:
        """Rounds whose train phase the manifest records and whose checkpoint has its config:
        the checkpoints `eval` and `serve` may load."""
        return sorted(
            int(k)
            for k, v in self.manifest().get("rounds", {}).items()
            if (self.checkpoint(int(k)) / "config.json").exists() and "train" in v.get("phases", {})
        )

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def tmp_dir(self) -> Path:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root / "tmp"))

    def clear_tmp(self) -> None:
        """Leftovers of a killed write are garbage by construction: nothing points at them."""
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        for stray in self.root.rglob(".*.tmp"):
            stray.unlink(missing_ok=True)
