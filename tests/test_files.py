"""Task files: JSONL and Parquet load, save and serve tasks; bad files give located errors."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reasonloop.tasks.files import FileFamily, load_tasks, save_tasks
from reasonloop.types import Task


def _write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_jsonl_minimal_columns_get_defaults(tmp_path):
    p = tmp_path / "t.jsonl"
    _write_jsonl(
        p, [{"prompt": "1+1=", "answer": "2"}, "", {"prompt": "2*3=", "answer": 6, "difficulty": 2}]
    )
    tasks = load_tasks(p)
    assert [t.prompt for t in tasks] == ["1+1=", "2*3="]
    assert [t.answer for t in tasks] == ["2", "6"]  # a numeric answer is read as text
    assert [t.difficulty for t in tasks] == [0, 2]
    assert all(t.family == f"file:{p}" for t in tasks)
    assert len({t.id for t in tasks}) == 2
    assert load_tasks(p)[0].id == tasks[0].id  # ids are content hashes: stable across loads


def test_unknown_columns_are_kept_in_params(tmp_path):
    p = tmp_path / "t.jsonl"
    _write_jsonl(p, [{"prompt": "q", "answer": None, "solution": "because", "id": "x1"}])
    (t,) = load_tasks(p)
    assert t.id == "x1" and t.answer is None and t.params == {"solution": "because"}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_save_load_round_trip(tmp_path, suffix):
    tasks = [
        Task(
            id="a",
            family="gym:chain_sum",
            prompt="1+2 = ?\nthink",
            answer="3",
            difficulty=1,
            params={"metadata": {"n": [1, 2]}},
            parents=["p"],
            made_by="gen",
            round=2,
            split="heldout",
        ),
        Task(id="b", family="f", prompt="é ∑", answer=None),
    ]
    p = tmp_path / "sub" / f"tasks{suffix}"
    save_tasks(tasks, p)
    assert load_tasks(p) == tasks
    assert [f.name for f in p.parent.iterdir()] == [p.name]  # no temp file left behind


def test_save_empty_parquet_round_trip(tmp_path):
    p = tmp_path / "empty.parquet"
    save_tasks([], p)
    assert load_tasks(p) == []


def test_save_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "t.jsonl"
    save_tasks([Task(id="a", family="f", prompt="q", answer="1")], p)
    before = p.read_bytes()
    bad = Task(id="b", family="f", prompt="q", answer="1", params={"x": object()})
    with pytest.raises(TypeError):
        save_tasks([bad], p)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["t.jsonl"]


def test_broken_jsonl_line_is_located(tmp_path):
    p = tmp_path / "t.jsonl"
    _write_jsonl(
        p,
        [
            {"prompt": "a", "answer": "1"},
            {"prompt": "b", "answer": "2"},
            '{"prompt": "c", "answer": ',
        ],
    )
    with pytest.raises(ValueError, match=rf"{p}:3: invalid JSON .*'prompt' and 'answer'"):
        load_tasks(p)


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"prompt": "a"}, r":1: missing column\(s\) 'answer'; found \['prompt'\]"),
        ([1, 2], r":1: expected a JSON object, got list"),
        ({"prompt": 5, "answer": "1"}, r":1: field 'prompt': expected a non-empty string, got 5"),
        (
            {"prompt": "a", "answer": [1]},
            r":1: field 'answer': expected a string, a number or null",
        ),
        (
            {"prompt": "a", "answer": "1", "difficulty": "hard"},
            r":1: field 'difficulty': expected an integer",
        ),
        (
            {"prompt": "a", "answer": "1", "params": "{oops"},
            r":1: field 'params': expected JSON text",
        ),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, pattern):
    p = tmp_path / "t.jsonl"
    _write_jsonl(p, [row])
    with pytest.raises(ValueError, match=pattern):
        load_tasks(p)


def test_parquet_missing_column_and_bad_row(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"prompt": ["a"], "solution": ["s"]}), p)
    with pytest.raises(ValueError, match=r"missing column\(s\) 'answer'"):
        load_tasks(p)
    pq.write_table(pa.table({"prompt": ["a", ""], "answer": ["1", "2"]}), p)
    with pytest.raises(ValueError, match=rf"{p}: row 1: field 'prompt'"):
        load_tasks(p)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "t.csv").write_text("prompt,answer\n")
    with pytest.raises(ValueError, match=r"unknown suffix '\.csv'"):
        load_tasks(tmp_path / "t.csv")


def test_file_family_serves_levels_and_verifies(tmp_path):
    p = tmp_path / "t.jsonl"
    _write_jsonl(
        p, [{"prompt": f"q{i}", "answer": str(i / 2), "difficulty": i % 2} for i in range(10)]
    )
    fam = FileFamily(p, verifier="numeric")
    assert fam.name == f"file:{p}" and fam.levels == (0, 1)
    rng = random.Random(0)
    drawn = [fam.make(rng, 1) for _ in range(30)]
    assert {t.difficulty for t in drawn} == {1}
    assert {t.prompt for t in drawn} == {f"q{i}" for i in range(1, 10, 2)}
    assert all(t.family == fam.name for t in drawn)
    again = [fam.make(random.Random(0), 1).prompt for _ in range(2)]
    assert again[0] == again[1] == drawn[0].prompt  # seeded
    t = drawn[0]
    assert fam.reference(t) == ([], t.answer)
    assert fam.verify(t, t.answer) == 1.0
    assert fam.verify(t, f" {round(float(t.answer) * 4)}/4 ") == 1.0  # numeric: any notation
    assert fam.verify(t, "99") == 0.0 and fam.verify(t, None) == 0.0
    with pytest.raises(ValueError, match=r"no task has difficulty 5; levels are \[0, 1\]"):
        fam.make(rng, 5)


def test_file_family_rejects_unknown_verifier_and_empty_file(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("\n")
    with pytest.raises(ValueError, match="verifier must be one of"):
        FileFamily(p, verifier="fuzzy")
    with pytest.raises(ValueError, match="holds no tasks"):
        FileFamily(p)
