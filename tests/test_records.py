"""Records round-trip through Parquet, and writes are atomic."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from reasonloop.loop.store import (
    CorruptRunError,
    RunDir,
    atomic_write_json,
    read_records,
    write_records,
)
from reasonloop.types import Decision, Judgement, PreferencePair, SFTExample, Task, Trace, stable_id


def sample_records():
    task = Task(
        "t1", "addition", "12+34=", "46", 2, {"digits": 2}, ["t0"], "addition@generator", 1, "train"
    )
    trace = Trace(
        "x1",
        "t1",
        "2+4=6;1+3=4#46",
        ["2+4=6", "1+3=4"],
        "46",
        "reasoner:r0",
        {"temperature": 0.7, "sample": 3},
        None,
        1,
        14,
    )
    judg = Judgement("x1", "gold", "step", [1.0, 0.5], verdict=True, critique="ok \u00e9", round=1)
    dec = Decision("x1", False, "duplicate", 1)
    ex = SFTExample("12+34=", "46", "t1", "x1", 1)
    pair = PreferencePair("p", "a", "b", "step", "t1", 2)
    return [task], [trace], [judg], [dec], [ex], [pair]


@pytest.mark.parametrize(
    "idx,cls",
    [(0, Task), (1, Trace), (2, Judgement), (3, Decision), (4, SFTExample), (5, PreferencePair)],
)
def test_round_trip(tmp_path, idx, cls):
    recs = sample_records()[idx]
    path = tmp_path / f"{cls.__name__}.parquet"
    write_records(path, recs, cls)
    assert read_records(path, cls) == recs
    # Any Parquet reader sees plain columns (nested fields as JSON text).
    cols = pq.read_table(path).column_names
    assert set(cols) == set(recs[0].to_row())


def test_empty_file_is_written_and_reads_back_empty(tmp_path):
    write_records(tmp_path / "e.parquet", [], Trace)
    assert read_records(tmp_path / "e.parquet", Trace) == []


def test_truncated_parquet_is_named(tmp_path):
    path = tmp_path / "traces.parquet"
    write_records(path, sample_records()[1], Trace)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptRunError, match="traces.parquet"):
        read_records(path, Trace)


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path):
    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "m.json", {"x": Boom()})
    assert not (tmp_path / "m.json").exists()
    assert [p for p in os.listdir(tmp_path)] == []


def test_stable_id_is_content_based():
    assert stable_id("a", 1) == stable_id("a", 1)
    assert stable_id("a", 1) != stable_id("a", 2)
    assert stable_id("ab", "c") != stable_id("a", "bc")


def test_manifest_corruption_is_named(tmp_path):
    rd = RunDir(tmp_path)
    rd.manifest_path.write_text("{not json")
    with pytest.raises(CorruptRunError, match="manifest.json"):
        rd.manifest()
