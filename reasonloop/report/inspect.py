"""`reasonloop inspect RUN_DIR [--task ID | --round N]`: a run's lineage in the terminal.

Without options, one line per round; with `--round N`, that round's tasks; with `--task ID`
(any unique prefix of the id), the task in every round that saw it, with its traces, their
judgements and the keep/drop decisions.

Model-written text is shown with control and format characters escaped: a trace must not be
able to move the cursor, recolour the terminal or reorder what follows (bidi overrides).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

from reasonloop.report.lineage import NotARunError, Run, TaskView, load_run
from reasonloop.types import Task

WIDTH = 100


def safe(text: Any) -> str:
    """Printable text: every non-printable character (C0/C1 controls such as ESC, Unicode
    format characters, line breaks) is written as its Python escape."""
    s = "" if text is None else str(text)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def _short(text: Any, n: int) -> str:
    s = safe(text)
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _pct(v: Any) -> str:
    return f"{v:.1%}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _grid(
    head: list[str], rows: list[list[str]], right: set[int] | frozenset[int] = frozenset()
) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def _wrapped(label: str, text: Any, indent: int) -> list[str]:
    """`label: text`, the text's own lines kept, each escaped and wrapped."""
    pad = " " * indent
    lines = str("" if text is None else text).split("\n")
    out = []
    for i, raw in enumerate(lines):
        first = f"{pad}{label:<10}" if i == 0 else pad + " " * 10
        out += textwrap.wrap(
            safe(raw) or ("(empty)" if len(lines) == 1 else ""),
            WIDTH,
            initial_indent=first,
            subsequent_indent=pad + " " * 10,
            drop_whitespace=False,
        ) or [first.rstrip()]
    return out


def overview(run: Run) -> str:
    s = run.summary or {}
    cfg = run.config
    preset = s.get("preset", cfg.get("preset")) or "custom"
    tasks_cfg = cfg.get("tasks") if isinstance(cfg.get("tasks"), dict) else {}
    family = s.get("family", tasks_cfg.get("family", "?"))
    state = (
        "complete"
        if s.get("complete")
        else ("no summary.json yet: in progress or stopped" if not run.summary else "incomplete")
    )
    out = [
        f"run {safe(run.root)}: {safe(preset)}, family {safe(family)}, "
        f"seed {safe(s.get('seed', cfg.get('seed', '?')))}, {len(run.metrics)} rounds evaluated "
        f"({state})",
        "",
    ]
    rows = []
    for r in sorted(run.rounds):
        rr, m = run.rounds[r], run.metrics.get(r, {})
        dropped = rr.dropped()
        levels = sorted({t.difficulty for t in rr.tasks})
        rows.append(
            [
                str(r),
                str(len(rr.tasks)),
                ",".join(map(str, levels)) or "-",
                str(len(rr.traces)),
                str(sum(d.kept for d in rr.decisions)) if rr.decisions else "-",
                ", ".join(
                    f"{safe(k)} {v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1])
                )
                or "-",
                _pct(m.get("heldout", {}).get("pass@1")),
            ]
        )
    out.append(
        _grid(
            ["round", "tasks", "levels", "traces", "kept", "dropped", "held-out pass@1"],
            rows,
            {0, 1, 3, 4, 6},
        )
        if rows
        else "(no round has written records yet)"
    )
    out += ["", f"more: reasonloop inspect {safe(run.root)} --round N | --task ID"]
    return "\n".join(out)


def round_table(run: Run, r: int) -> str:
    views = run.views(r)
    traces = sum(len(v.traces) for v in views)
    kept = sum(v.kept for v in views)
    head = f"round {r}: {len(views)} tasks, {traces} traces, {kept} kept"
    if not views:
        return head + "\n(no tasks written for this round yet)"
    rows = [
        [
            v.task.id,
            str(v.task.difficulty),
            _short(v.task.made_by, 24),
            str(len(v.traces)),
            str(v.kept),
            _short(v.task.prompt, 40),
        ]
        for v in views
    ]
    return (
        head
        + "\n\n"
        + _grid(["id", "difficulty", "made_by", "traces", "kept", "prompt"], rows, {1, 3, 4})
    )


def _task_block(task: Task, rounds: list[int]) -> list[str]:
    out = [f"task {task.id} ({safe(task.family)}, {task.split})"]
    out += _wrapped("prompt:", task.prompt, 2)
    out += _wrapped("answer:", "(none: label-free)" if task.answer is None else task.answer, 2)
    out.append(f"  {'level:':<10}{task.difficulty}   params {safe(json.dumps(task.params))}")
    out.append(f"  {'made by:':<10}{safe(task.made_by)} in round {task.round}")
    out.append(f"  {'parents:':<10}{', '.join(map(safe, task.parents)) or 'none'}")
    out.append(
        f"  {'rounds:':<10}seen in round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))}"
    )
    return out


def task_detail(seen: list[tuple[int, TaskView]]) -> str:
    out = _task_block(seen[0][1].task, [r for r, _ in seen])
    for r, v in seen:
        out += ["", f"round {r}: {len(v.traces)} traces, {v.kept} kept"]
        for tv in v.traces:
            t, d = tv.trace, tv.decision
            verdict = (
                "no decision"
                if d is None
                else ("KEPT" if d.kept else f"dropped ({safe(d.reason)})")
            )
            out.append(f"  trace {t.id}  {verdict}")
            out.append(
                f"    {'by:':<10}{safe(t.producer)}  {t.n_tokens} tokens  "
                f"decoding {safe(json.dumps(t.decoding, sort_keys=True))}"
                + (f"  parent {safe(t.parent)}" if t.parent else "")
            )
            out += _wrapped("text:", t.text, 4)
            for i, step in enumerate(t.steps, 1):
                out += _wrapped(f"step {i}:", step, 4)
            out += _wrapped("answer:", "(none)" if t.answer is None else t.answer, 4)
            for j in tv.judgements:
                scores = ", ".join(f"{x:.3g}" for x in j.scores[:16]) + (
                    " ..." if len(j.scores) > 16 else ""
                )
                out.append(
                    f"    {'judged:':<10}{safe(j.evaluator)} ({safe(j.level)}) verdict {j.verdict}"
                    f"  scores [{scores}]"
                )
                if j.critique:
                    out += _wrapped("critique:", j.critique, 6)
            if not tv.judgements:
                out.append(f"    {'judged:':<10}(no judgement)")
    return "\n".join(out)


def _heldout_matches(run: Run, prefix: str) -> list[str]:
    from reasonloop.loop.store import read_records

    path = run.root / "heldout.parquet"
    if not path.exists():
        return []
    return [t.id for t in read_records(path, Task) if t.id.startswith(prefix)]


class NoSuchRecordError(ValueError):
    """A --task or --round that names nothing (or too much) in the run."""


def find_task(run: Run, prefix: str) -> list[tuple[int, TaskView]]:
    ids = run.match(prefix)
    if not ids:
        held = _heldout_matches(run, prefix)
        extra = f"; {held[0]} is a held-out task, and held-out tasks keep no traces" if held else ""
        raise NoSuchRecordError(
            f"no task with an id starting with {safe(prefix)!r} in {run.root} "
            f"({len(run.task_ids())} tasks; `reasonloop inspect {run.root} --round N` lists a "
            f"round's){extra}"
        )
    if len(ids) > 1:
        shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
        raise NoSuchRecordError(
            f"task id prefix {safe(prefix)!r} is ambiguous in {run.root}: {len(ids)} tasks match "
            f"({shown}); give more characters"
        )
    return run.lineage(ids[0])


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        run = load_run(args.run_dir)
        if args.task is not None:
            text = task_detail(find_task(run, args.task))
        elif args.round is not None:
            if args.round not in run.rounds:
                have = ", ".join(map(str, sorted(run.rounds))) or "none yet"
                raise NoSuchRecordError(f"{run.root} has no round {args.round} (rounds: {have})")
            text = round_table(run, args.round)
        else:
            text = overview(run)
    except (NotARunError, NoSuchRecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="show a run's rounds, a round's tasks, or one task's lineage"
    )
    p.add_argument("run_dir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--task", metavar="ID", help="a task id or a unique prefix of one")
    which.add_argument("--round", type=int, metavar="N", help="list round N's tasks")
    p.set_defaults(fn=cmd_inspect)
