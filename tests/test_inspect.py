"""`reasonloop inspect`: a real short run's lineage in the terminal, checked against the
records on disk."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from small_run import copy_run, inject, small_run

from reasonloop.cli import main
from reasonloop.loop.store import read_records
from reasonloop.types import Decision, Judgement, Task, Trace


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return small_run(tmp_path_factory)


def inspect(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["inspect", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def records(run: Path, r: int):
    d = run / "rounds" / f"r{r:03d}"
    return (
        read_records(d / "tasks.parquet", Task),
        read_records(d / "traces.parquet", Trace),
        read_records(d / "judgements.parquet", Judgement),
        read_records(d / "decisions.parquet", Decision),
    )


def test_overview_has_one_line_per_round(run_dir, capsys):
    rc, out, _ = inspect(capsys, run_dir)
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = out.splitlines()
    for m in summary["rounds"]:
        r = m["round"]
        tasks, traces, _, decisions = records(run_dir, r)
        row = next(x.split() for x in lines if x.split()[:1] == [str(r)])
        assert row[1] == str(len(tasks)) and row[3] == str(len(traces))
        assert row[4] == str(sum(d.kept for d in decisions))
        assert row[-1] == f"{m['heldout']['pass@1']:.1%}"
        for reason, n in Counter(d.reason for d in decisions if not d.kept).items():
            assert f"{reason} {n}" in " ".join(row)
    assert "complete" in lines[0]


def test_round_lists_its_tasks(run_dir, capsys):
    rc, out, _ = inspect(capsys, run_dir, "--round", 1)
    assert rc == 0
    tasks, traces, _, decisions = records(run_dir, 1)
    kept = {d.trace_id for d in decisions if d.kept}
    rows = {x.split()[0]: x.split() for x in out.splitlines()[4:]}
    assert set(rows) == {t.id for t in tasks}
    for t in tasks:
        mine = [x for x in traces if x.task_id == t.id]
        assert rows[t.id][1:5] == [
            str(t.difficulty),
            t.made_by,
            str(len(mine)),
            str(sum(x.id in kept for x in mine)),
        ]


def test_task_by_prefix_shows_its_lineage(run_dir, capsys):
    tasks, traces, judgements, decisions = records(run_dir, 1)
    ids = [t.id for t in read_records(run_dir / "rounds" / "r000" / "tasks.parquet", Task)]
    ids += [t.id for t in tasks] + [
        t.id for t in read_records(run_dir / "rounds" / "r002" / "tasks.parquet", Task)
    ]
    task = tasks[3]
    # The shortest prefix that names this task alone.
    prefix = next(
        task.id[:n] for n in range(1, 17) if sum(i.startswith(task.id[:n]) for i in ids) == 1
    )
    rc, out, _ = inspect(capsys, run_dir, "--task", prefix)
    assert rc == 0
    assert out.startswith(f"task {task.id} ")
    assert task.prompt in out and task.made_by in out and str(task.answer) in out
    assert "seen in round 1" in out
    mine = [t for t in traces if t.task_id == task.id]
    decided = {d.trace_id: d for d in decisions}
    for t in mine:
        block = out[out.index(f"trace {t.id}") :]
        block = block[: block.find("  trace ", 1) if "  trace " in block[1:] else None]
        d = decided[t.id]
        assert ("KEPT" if d.kept else f"dropped ({d.reason})") in block
        assert t.producer in block and f"text:     {t.text}" in block
        for j in judgements:
            if j.trace_id == t.id:
                assert f"{j.evaluator} ({j.level}) verdict {j.verdict}" in block


def test_ambiguous_and_unknown_prefixes(run_dir, capsys):
    ids = [t.id for t in read_records(run_dir / "rounds" / "r000" / "tasks.parquet", Task)]
    first = Counter(i[0] for i in ids).most_common(1)[0][0]
    rc, out, err = inspect(capsys, run_dir, "--task", first)
    assert rc == 2 and out == ""
    assert "ambiguous" in err and str(run_dir) in err
    rc, _, err = inspect(capsys, run_dir, "--task", "zzzz")
    assert rc == 2 and "no task" in err and str(run_dir) in err
    rc, _, err = inspect(capsys, run_dir, "--round", 99)
    assert rc == 2 and "no round 99" in err and "0, 1, 2" in err


def test_heldout_task_is_named_as_such(run_dir, capsys):
    held = read_records(run_dir / "heldout.parquet", Task)
    train = {t.id for r in range(3) for t in records(run_dir, r)[0]}
    task = next(t for t in held if t.id not in train)
    rc, _, err = inspect(capsys, run_dir, "--task", task.id)
    assert rc == 2 and f"{task.id} is a held-out task" in err


@pytest.mark.parametrize("bad", ["missing", "file", "empty"])
def test_bad_run_dir(tmp_path, capsys, bad):
    path = tmp_path / "x"
    if bad == "file":
        path.write_text("")
    elif bad == "empty":
        path.mkdir()
    rc, out, err = inspect(capsys, path)
    assert rc == 2 and out == ""
    assert str(path) in err and "error:" in err


def test_task_and_round_are_exclusive(run_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(run_dir), "--round", "1", "--task", "ab"])
    assert e.value.code == 2


def test_terminal_control_characters_are_escaped(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    hostile = "12\x1b[2J\x1b]0;pwned\x07\u202eevil\r\nnext"
    task, trace = inject(run, 1, hostile)
    rc, out, _ = inspect(capsys, run, "--task", task.id)
    assert rc == 0
    assert "\x1b" not in out and "\u202e" not in out and "\r" not in out and "\x07" not in out
    assert "12\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil\\r" in out
    assert "next" in out and trace.id in out
    rc, out, _ = inspect(capsys, run, "--round", 1)
    assert rc == 0 and "\x1b" not in out


def test_unfinished_run(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    (run / "summary.json").unlink()
    (run / "rounds" / "r002" / "decisions.parquet").unlink()
    rc, out, _ = inspect(capsys, run)
    assert rc == 0 and "no summary.json yet" in out
    row = next(x.split() for x in out.splitlines() if x.split()[:1] == ["2"])
    assert row[4] == "-"  # no decisions yet
