"""`reasonloop report RUN_DIR`: one self-contained HTML page about a run.

Held-out accuracy, training curves, evaluator calibration, the tasks' difficulty and diversity,
what was kept and why, where the time went, and a sample browser that follows a task through
its traces, judgements and keep/drop decisions. The page loads nothing from the network: the
charts are inline SVG made here, the script is inline, and a Content-Security-Policy forbids
any other load or script.

Everything the model or a task file wrote is untrusted: it reaches the page only as escaped
HTML text or inside the embedded JSON (with `<`, `>` and `&` written as \\u escapes, so no
`</script>` or `<!--` can end the block), and the script puts it in the DOM with `textContent`.
The CSP's script hash means that even a string that slipped through could not run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import sys
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

from reasonloop.loop.store import atomic_write_bytes
from reasonloop.report.diversity import distinct_share, mean_jaccard_distance
from reasonloop.report.lineage import NotARunError, Run, TaskView, load_run
from reasonloop.report.svg import bar_chart, fmt, line_chart, ramp

DEFAULT_MAX_TASKS = 40
DEFAULT_MAX_TRACES = 12
MAX_TEXT = 2000
MAX_SCORES = 64
MAX_CURVE_POINTS = 400
PHASES = ("propose", "solve", "process", "train", "eval")
# Kept traces are green; drop reasons never are.
_DROP_COLORS = ["#D55E00", "#E69F00", "#CC79A7", "#56B4E9", "#0072B2", "#999999", "#F0E442"]

# Round-metric keys this page lays out itself; any other key (a later `calibration`, say) is
# shown generically, so new metrics appear without a change here.
_KNOWN_KEYS = {
    "round",
    "heldout",
    "seconds",
    "tokens_per_s",
    "data",
    "train",
    "frontier",
    "levels",
    "next_frontier",
    "gold_labels_in_training",
}
_CURVE_NAMES = {
    "losses": "loss",
    "margins": "reward margin (chosen - rejected)",
    "accuracies": "pair accuracy",
    "kl": "KL to the reference",
    "clip_fraction": "clip fraction",
}


# -- formatting ----------------------------------------------------------------------------


def _num(v: Any, pct: bool = False) -> str:
    if v is None:
        return "\u2013"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return f"{v:.1%}" if pct else fmt(v)
    return str(v)


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are plain text; every one is escaped here."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{escape(cls)}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list):
        return {prefix: ", ".join(_num(x) for x in obj[:20]) + (" ..." if len(obj) > 20 else "")}
    return {prefix: obj}


def _level_order(level: str) -> tuple[int, int | str]:
    # Levels are numbers written as JSON keys; a family may one day name them instead.
    return (0, int(level)) if level.lstrip("-").isdigit() else (1, level)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _clip(text: str | None, limit: int = MAX_TEXT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"\u2026 [{len(text) - limit} more characters]"


def _downsample(values: list[float], limit: int = MAX_CURVE_POINTS) -> list[tuple[float, float]]:
    """Every k-th step (and the last), so a 4000-step seed curve stays a few KB of SVG."""
    pts = [(float(i + 1), float(v)) for i, v in enumerate(values)]
    if len(pts) <= limit:
        return pts
    k = math.ceil(len(pts) / limit)
    return pts[::k] + ([pts[-1]] if (len(pts) - 1) % k else [])


def _section(anchor: str, title: str, body: str, note: str = "") -> str:
    p = f'<p class="note">{escape(note)}</p>' if note else ""
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{p}{body}</section>'


def _charts(*svgs: str) -> str:
    return '<div class="charts">' + "".join(f"<figure>{s}</figure>" for s in svgs) + "</div>"


# -- sections --------------------------------------------------------------------------------


def _overview(run: Run, rounds: list[int]) -> str:
    s = run.summary or {}
    cfg = run.config
    tasks_cfg = cfg.get("tasks", {}) if isinstance(cfg.get("tasks"), dict) else {}
    strategy = cfg.get("strategy", {}) if isinstance(cfg.get("strategy"), dict) else {}
    rows = [
        ["run directory", str(run.root)],
        ["preset", str(s.get("preset", cfg.get("preset")) or "custom")],
        ["algorithm", str(strategy.get("algorithm", "\u2013"))],
        ["family", str(s.get("family", tasks_cfg.get("family", "\u2013")))],
        ["seed", str(s.get("seed", cfg.get("seed", "\u2013")))],
        ["rounds finished", f"{len(run.metrics)} (of {cfg.get('rounds', '?')} + the seed round)"],
        ["complete", _num(s.get("complete")) if run.summary else "no summary.json yet"],
        [
            "seed levels",
            ", ".join(map(str, s.get("seed_levels", tasks_cfg.get("seed_levels", [])))),
        ],
    ]
    if "seconds" in s:
        rows.append(["total seconds", _num(s["seconds"])])
    change = s.get("heldout_change") or {}
    for k, v in change.items():
        if v is not None:
            rows.append([f"held-out change, {k}", f"{v * 100:+.1f} points (last round - round 0)"])
    body = _table(["", ""], rows, "kv")
    flagged = s.get("reward_hacking") or []
    if flagged:
        items = "".join(
            f"<li>round {escape(str(f.get('round')))}: {escape(str(f.get('reward')))} "
            f"{escape(_num(f.get('from')))} \u2192 {escape(_num(f.get('to')))} while held-out "
            f"pass@1 {escape(_num(f.get('heldout_from'), True))} \u2192 "
            f"{escape(_num(f.get('heldout_to'), True))}</li>"
            for f in flagged
            if isinstance(f, dict)
        )
        body += f'<div class="warn"><b>Possible reward hacking</b><ul>{items}</ul></div>'
    if not rounds:
        body += '<p class="warn">No round has written anything yet.</p>'
    return _section("overview", "Run", body)


def _heldout(run: Run) -> str:
    ms = [
        run.metrics[r]
        for r in sorted(run.metrics)
        if isinstance(run.metrics[r].get("heldout"), dict)
    ]
    if not ms:
        return _section("heldout", "Held-out pass@1", '<p class="note">No round evaluated yet.</p>')
    levels = sorted({k for m in ms for k in m["heldout"].get("by_level", {})}, key=_level_order)
    seed = {str(x) for x in (run.summary or {}).get("seed_levels", [])}
    xs = [float(m["round"]) for m in ms]
    series = [
        (
            f"level {lv}",
            [(x, m["heldout"].get("by_level", {}).get(lv)) for x, m in zip(xs, ms, strict=True)],
        )
        for lv in levels
    ]
    series.append(("all", [(x, m["heldout"].get("pass@1")) for x, m in zip(xs, ms, strict=True)]))
    colors = [ramp(i, len(levels)) for i in range(len(levels))] + ["#111111"]
    chart = line_chart(
        series,
        title="held-out pass@1 per round (greedy)",
        x_label="round (0 = supervised seed)",
        y_label="pass@1",
        y_range=(0.0, 1.0),
        colors=colors,
        bold={"all"},
        width=640,
        x_ticks=xs,
    )
    scalars = [
        k
        for k in dict.fromkeys(["pass@1", "beyond_seed", *(k for m in ms for k in m["heldout"])])
        if k != "by_level" and any(_is_number(m["heldout"].get(k)) for m in ms)
    ]
    head = ["round", *scalars, *(f"L{lv}{'*' if lv in seed else ''}" for lv in levels)]
    rows = [
        [str(m["round"])]
        + [_num(m["heldout"].get(k), pct=True) for k in scalars]
        + [_num(m["heldout"].get("by_level", {}).get(lv), pct=True) for lv in levels]
        for m in ms
    ]
    body = _charts(chart) + _table(head, rows, "num")
    return _section(
        "heldout",
        "Held-out pass@1",
        body,
        "Fixed held-out tasks, the same every round and never trained on. * = seed level "
        "(trained with gold labels). Other columns (maj@k, pass@k) appear when sampled.",
    )


# Lists in a train phase that are not one value per step: the seed's attempts and stages.
_NOT_CURVES = frozenset({"seed_checks", "stage_steps"})


def _training(run: Run) -> str:
    phases = {
        int(k): v.get("phases", {}).get("train", {})
        for k, v in run.manifest.get("rounds", {}).items()
        if isinstance(v, dict)
    }
    curves: dict[str, dict[int, list[float]]] = {}
    for r in sorted(phases):
        for key, val in phases[r].items():
            if key in _NOT_CURVES:
                continue
            if isinstance(val, list) and val and all(_is_number(x) for x in val):
                curves.setdefault(key, {})[r] = val
    charts = []
    ordered = [k for k in _CURVE_NAMES if k in curves] + sorted(set(curves) - set(_CURVE_NAMES))
    for key in ordered:
        per_round = curves[key]
        rs = sorted(per_round)
        colors = {r: ramp(i, len(rs)) for i, r in enumerate(rs)}
        # The supervised seed trains far longer and from a far higher loss than the later
        # rounds: on one chart it would flatten them, so it gets its own.
        groups = [rs]
        if 0 in rs and len(rs) > 1:
            groups = [[0], rs[1:]]
        for group in groups:
            if len(groups) == 1:
                span = ""
            elif group == [0]:
                span = " (seed round)"
            elif len(group) == 1:
                span = f" (round {group[0]})"
            else:
                span = f" (rounds {group[0]}-{group[-1]})"
            charts.append(
                line_chart(
                    [(f"round {r}", _downsample(per_round[r])) for r in group],
                    title=f"{_CURVE_NAMES.get(key, key)} per step{span}",
                    x_label="step",
                    y_label=_CURVE_NAMES.get(key, key).split(" (")[0],
                    colors=[colors[r] for r in group],
                )
            )
    ms = [
        run.metrics[r] for r in sorted(run.metrics) if isinstance(run.metrics[r].get("train"), dict)
    ]
    keys = list(dict.fromkeys(k for m in ms for k in m["train"]))
    table = _table(
        ["round", *keys],
        [[str(m["round"]), *(_num(m["train"].get(k)) for k in keys)] for m in ms],
        "num",
    )
    if not charts and not ms:
        return _section("training", "Training", '<p class="note">No round trained yet.</p>')
    return _section(
        "training",
        "Training",
        (_charts(*charts) if charts else "") + table,
        "Per-step curves from manifest.json (click a legend entry to hide a round; round 0 is "
        "the supervised seed). The table is summary.json's `train` per round.",
    )


def _generic_metric(run: Run, key: str, title: str, note: str) -> str:
    """A per-round metric this page does not know in detail: a table of its leaves (nested
    keys joined with dots) and a chart of the numeric ones."""
    rows_src = [
        (r, _flatten(run.metrics[r][key], "" if isinstance(run.metrics[r][key], dict) else "value"))
        for r in sorted(run.metrics)
        if key in run.metrics[r]
    ]
    cols = list(dict.fromkeys(c for _, flat in rows_src for c in flat))
    table = _table(
        ["round", *cols],
        [[str(r), *(_num(flat.get(c)) for c in cols)] for r, flat in rows_src],
        "num",
    )
    numeric = [c for c in cols if any(_is_number(flat.get(c)) for _, flat in rows_src)]
    chart = ""
    if numeric and len(rows_src) > 0:
        chart = _charts(
            line_chart(
                [
                    (
                        c,
                        [
                            (float(r), flat.get(c) if _is_number(flat.get(c)) else None)
                            for r, flat in rows_src
                        ],
                    )
                    for c in numeric[:12]
                ],
                title=f"{title} per round",
                x_label="round",
                y_label=key,
                x_ticks=[float(r) for r, _ in rows_src],
            )
        )
    return _section(f"metric-{key}", title, chart + table, note)


def _data(run: Run, rounds: list[int]) -> str:
    levels = sorted({t.difficulty for r in rounds for t in run.rounds[r].tasks})
    cats = [f"r{r}" for r in rounds]
    hist = bar_chart(
        cats,
        [
            (
                f"level {lv}",
                [float(sum(t.difficulty == lv for t in run.rounds[r].tasks)) for r in rounds],
            )
            for lv in levels
        ],
        title="tasks per round by difficulty",
        x_label="round",
        y_label="tasks",
        colors=[ramp(i, len(levels)) for i in range(len(levels))],
    )
    div_rows = []
    for r in rounds:
        prompts = [t.prompt for t in run.rounds[r].tasks]
        made_by = Counter(t.made_by for t in run.rounds[r].tasks)
        div_rows.append(
            [
                str(r),
                str(len(prompts)),
                _num(distinct_share(prompts), pct=True),
                _num(mean_jaccard_distance(prompts)),
                _num(sum(map(len, prompts)) / len(prompts)) if prompts else "\u2013",
                ", ".join(f"{k} ({v})" for k, v in made_by.most_common(4)),
            ]
        )
    diversity = _table(
        [
            "round",
            "tasks",
            "distinct prompts",
            "3-gram Jaccard distance",
            "mean prompt chars",
            "made by",
        ],
        div_rows,
        "num",
    )
    # Counts from summary.json where the round finished; from decisions.parquet otherwise.
    kept: list[float] = []
    dropped: list[dict[str, int]] = []
    for r in rounds:
        d = run.metrics.get(r, {}).get("data")
        if isinstance(d, dict) and "kept" in d:
            kept.append(float(d["kept"]))
            dropped.append(dict(d.get("dropped") or {}))
        else:
            kept.append(float(sum(x.kept for x in run.rounds[r].decisions)))
            dropped.append(run.rounds[r].dropped())
    reasons = sorted(
        {k for d in dropped for k in d}, key=lambda k: -sum(d.get(k, 0) for d in dropped)
    )
    kd = bar_chart(
        cats,
        [("kept", kept)]
        + [(f"dropped: {k}", [float(d.get(k, 0)) for d in dropped]) for k in reasons],
        title="traces kept and dropped per round",
        x_label="round",
        y_label="traces",
        colors=["#009E73"] + [_DROP_COLORS[i % len(_DROP_COLORS)] for i in range(len(reasons))],
    )
    rows = []
    for i, r in enumerate(rounds):
        m = run.metrics.get(r, {})
        d = m.get("data") if isinstance(m.get("data"), dict) else {}
        rows.append(
            [
                str(r),
                _num(d.get("tasks", len(run.rounds[r].tasks))),
                _num(d.get("traces", len(run.rounds[r].traces))),
                _num(kept[i]),
                _num(d.get("tasks_kept")),
                _num(d.get("label_accuracy"), pct=True),
                _num(d.get("examples")),
                ", ".join(map(str, m.get("levels", []))) or "\u2013",
                _num(m.get("next_frontier")),
            ]
            + [_num(dropped[i].get(k, 0)) for k in reasons]
        )
    table = _table(
        [
            "round",
            "tasks",
            "traces",
            "kept",
            "tasks kept",
            "label accuracy",
            "examples",
            "levels",
            "next frontier",
            *(f"dropped: {k}" for k in reasons),
        ],
        rows,
        "num",
    )
    return _section(
        "data",
        "Tasks and data",
        _charts(hist, kd) + "<h3>Diversity</h3>" + diversity + "<h3>Kept and dropped</h3>" + table,
        "Distinct prompts: share of a round's tasks with a prompt no other task of the round has. "
        "3-gram Jaccard distance: mean over pairs of (a sample of 200) prompts of 1 - |A\u2229B|/|A\u222aB| "
        "of their character 3-grams (1 = nothing shared). Label accuracy: share of kept answers "
        "that are right (gold read only to measure).",
    )


def _time(run: Run) -> str:
    ms = [
        run.metrics[r]
        for r in sorted(run.metrics)
        if isinstance(run.metrics[r].get("seconds"), dict)
    ]
    if not ms:
        return ""
    cats = [f"r{m['round']}" for m in ms]
    phase_bar = bar_chart(
        cats,
        [(p, [float(m["seconds"].get(p, 0.0)) for m in ms]) for p in PHASES],
        title="seconds per phase",
        x_label="round",
        y_label="seconds",
    )
    tps_keys = list(dict.fromkeys(k for m in ms for k in (m.get("tokens_per_s") or {})))
    tps = line_chart(
        [
            (k, [(float(m["round"]), (m.get("tokens_per_s") or {}).get(k)) for m in ms])
            for k in tps_keys
        ],
        title="tokens per second",
        x_label="round",
        y_label="tokens/s",
        x_ticks=[float(m["round"]) for m in ms],
    )
    rows = [
        [str(m["round"])]
        + [_num(m["seconds"].get(p)) for p in (*PHASES, "total")]
        + [_num((m.get("tokens_per_s") or {}).get(k)) for k in tps_keys]
        for m in ms
    ]
    table = _table(["round", *PHASES, "total", *(f"{k} tok/s" for k in tps_keys)], rows, "num")
    return _section(
        "time",
        "Time and throughput",
        _charts(phase_bar, tps) + table,
        "Generation tokens/s covers solve and eval; round 0's solve writes reference traces "
        "without generating.",
    )


# -- sample browser --------------------------------------------------------------------------


def _pick(views: list[TaskView], n: int) -> list[TaskView]:
    """Up to n tasks spread over difficulty levels and over kept / nothing-kept, in file order,
    so a capped round still shows each kind."""
    if len(views) <= n:
        return views
    buckets: dict[tuple[int, bool], list[int]] = {}
    for i, v in enumerate(views):
        buckets.setdefault((v.task.difficulty, v.kept > 0), []).append(i)
    chosen: list[int] = []
    queues = [buckets[k] for k in sorted(buckets)]
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return [views[i] for i in sorted(chosen)]


def _task_json(v: TaskView, max_traces: int) -> dict[str, Any]:
    t = v.task
    traces = []
    for tv in v.traces[:max_traces]:
        tr = tv.trace
        traces.append(
            {
                "id": tr.id,
                "text": _clip(tr.text),
                "steps": [_clip(s, 500) for s in tr.steps[:50]],
                "n_steps": len(tr.steps),
                "answer": _clip(tr.answer, 500),
                "producer": tr.producer,
                "decoding": tr.decoding,
                "parent": tr.parent,
                "n_tokens": tr.n_tokens,
                "judgements": [
                    {
                        "evaluator": j.evaluator,
                        "level": j.level,
                        "scores": j.scores[:MAX_SCORES],
                        "n_scores": len(j.scores),
                        "verdict": j.verdict,
                        "critique": _clip(j.critique),
                    }
                    for j in tv.judgements
                ],
                "decision": None
                if tv.decision is None
                else {"kept": tv.decision.kept, "reason": tv.decision.reason},
            }
        )
    return {
        "id": t.id,
        "round": t.round,
        "family": t.family,
        "prompt": _clip(t.prompt),
        "answer": _clip(t.answer, 500),
        "difficulty": t.difficulty,
        "params": t.params,
        "parents": t.parents,
        "made_by": t.made_by,
        "split": t.split,
        "n_traces": len(v.traces),
        "kept": v.kept,
        "traces": traces,
    }


def sample_data(run: Run, max_tasks: int, max_traces: int) -> dict[str, Any]:
    tasks, counts = [], {}
    for r in sorted(run.rounds):
        views = run.views(r)
        picked = _pick(views, max_tasks)
        counts[str(r)] = {"tasks": len(views), "shown": len(picked)}
        for v in picked:
            # The round the task was seen in, not the round that made it: they differ for
            # tasks a later round reviews again.
            tasks.append(_task_json(v, max_traces) | {"round": r, "made_in": v.task.round})
    return {"run": str(run.root), "rounds": counts, "max_traces": max_traces, "tasks": tasks}


def embed_json(obj: Any) -> str:
    """JSON safe inside `<script type="application/json">`: no `<`, `>` or `&` survives, so the
    data cannot close the block or open a comment, whatever the model wrote."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_BROWSER = """
<div class="browser">
  <div class="picker">
    <label>search <input id="task-search" type="search" placeholder="task id or prompt text"
      autocomplete="off"></label>
    <label>round <select id="round-filter"><option value="all">all</option></select></label>
    <div id="task-count" class="note"></div>
    <select id="task-list" size="18" aria-label="tasks"></select>
  </div>
  <div id="task-view" class="task-view" aria-live="polite"></div>
</div>
"""

_SCRIPT = r"""
"use strict";
(function () {
  // Legend entries toggle their series (a round's training curve, a difficulty level).
  document.querySelectorAll("svg.chart").forEach(function (svg) {
    svg.querySelectorAll(".legend-item").forEach(function (item) {
      function toggle() {
        var s = svg.querySelector('.series[data-series="' + item.getAttribute("data-series") + '"]');
        if (!s) { return; }
        item.classList.toggle("off", s.classList.toggle("off"));
      }
      item.addEventListener("click", toggle);
      item.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); }
      });
    });
  });

  // The sample browser. Every string from the run is untrusted: it only ever reaches the
  // page through textContent or an Option's text, never as markup.
  var data = JSON.parse(document.getElementById("sample-data").textContent);
  var tasks = data.tasks;
  var list = document.getElementById("task-list");
  var search = document.getElementById("task-search");
  var roundFilter = document.getElementById("round-filter");
  var count = document.getElementById("task-count");
  var view = document.getElementById("task-view");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function short(s, n) { s = String(s === null ? "" : s); return s.length > n ? s.slice(0, n - 1) + "\u2026" : s; }
  function compact(v) { return typeof v === "string" ? v : JSON.stringify(v); }
  function field(dl, name, value) {
    dl.appendChild(el("dt", null, name));
    var dd = el("dd");
    if (value instanceof Node) { dd.appendChild(value); } else { dd.textContent = value === null || value === undefined ? "\u2013" : compact(value); }
    dl.appendChild(dd);
  }
  function jump(id, round) {
    var b = el("button", "link", id + (round === undefined ? "" : " (round " + round + ")"));
    b.type = "button";
    b.addEventListener("click", function () { select(id, round); });
    return b;
  }
  function indexOf(id, round) {
    for (var i = 0; i < tasks.length; i++) {
      if (tasks[i].id === id && (round === undefined || tasks[i].round === round)) { return i; }
    }
    return -1;
  }
  function select(id, round) {
    var i = indexOf(id, round);
    if (i < 0) { return; }
    roundFilter.value = "all"; search.value = ""; fill();
    list.value = String(i);
    show(i);
  }

  Object.keys(data.rounds).forEach(function (r) {
    var c = data.rounds[r];
    roundFilter.appendChild(new Option("round " + r + " (" + c.shown + " of " + c.tasks + ")", r));
  });

  function fill() {
    var needle = search.value.trim().toLowerCase();
    var r = roundFilter.value;
    var before = list.value;
    list.textContent = "";
    var n = 0;
    tasks.forEach(function (t, i) {
      if (r !== "all" && String(t.round) !== r) { return; }
      if (needle && t.id.toLowerCase().indexOf(needle) < 0 &&
          String(t.prompt).toLowerCase().indexOf(needle) < 0) { return; }
      var mark = t.kept > 0 ? "\u2713" : "\u00b7";
      list.appendChild(new Option("r" + t.round + " " + mark + " " + t.id.slice(0, 10) + "  " + short(t.prompt, 48), String(i)));
      n++;
    });
    count.textContent = n + " of " + tasks.length + " sampled tasks";
    if (before !== "") { list.value = before; }
  }

  function show(i) {
    var t = tasks[i];
    view.textContent = "";
    view.appendChild(el("h3", null, "task " + t.id + " in round " + t.round));
    var dl = el("dl", "lineage");
    field(dl, "prompt", el("pre", "text", t.prompt));
    field(dl, "gold answer", t.answer);
    field(dl, "family", t.family);
    field(dl, "difficulty", t.difficulty);
    field(dl, "made by", t.made_by);
    field(dl, "made in round", t.made_in);
    field(dl, "split", t.split);
    field(dl, "params", t.params);
    var parents = el("span");
    if (!t.parents.length) { parents.textContent = "none"; }
    t.parents.forEach(function (p) {
      parents.appendChild(indexOf(p) >= 0 ? jump(p) : el("code", null, p));
      parents.appendChild(document.createTextNode(" "));
    });
    field(dl, "parents", parents);
    var others = el("span");
    tasks.forEach(function (o) { if (o.id === t.id && o.round !== t.round) { others.appendChild(jump(o.id, o.round)); } });
    if (others.childNodes.length) { field(dl, "also in", others); }
    field(dl, "traces", t.n_traces + " (" + t.kept + " kept)" + (t.n_traces > t.traces.length ? ", first " + t.traces.length + " shown" : ""));
    view.appendChild(dl);

    t.traces.forEach(function (tr) {
      var card = el("div", "trace");
      var d = tr.decision;
      var head = el("div", "trace-head");
      head.appendChild(el("span", d === null ? "badge" : (d.kept ? "badge kept" : "badge dropped"),
        d === null ? "no decision" : (d.kept ? "kept" : "dropped: " + d.reason)));
      head.appendChild(el("code", null, tr.id));
      head.appendChild(el("span", "meta", "by " + tr.producer + ", answer " + (tr.answer === null ? "(none)" : tr.answer) + ", " + tr.n_tokens + " tokens"));
      card.appendChild(head);
      card.appendChild(el("pre", "text trace-text", tr.text));
      var meta = el("dl", "lineage");
      field(meta, "decoding", tr.decoding);
      if (tr.parent) { field(meta, "parent trace", tr.parent); }
      if (d !== null) { field(meta, "decision", (d.kept ? "kept" : "dropped") + " (" + d.reason + ")"); }
      card.appendChild(meta);
      if (tr.steps.length) {
        var ol = el("ol", "steps");
        tr.steps.forEach(function (s) { ol.appendChild(el("li", null, s)); });
        card.appendChild(el("div", "sub", "steps" + (tr.n_steps > tr.steps.length ? " (first " + tr.steps.length + " of " + tr.n_steps + ")" : "")));
        card.appendChild(ol);
      }
      if (tr.judgements.length) {
        var table = el("table", "judgements");
        var hr = el("tr");
        ["evaluator", "level", "scores", "verdict", "critique"].forEach(function (h) { hr.appendChild(el("th", null, h)); });
        table.appendChild(hr);
        tr.judgements.forEach(function (j) {
          var row = el("tr");
          row.appendChild(el("td", null, j.evaluator));
          row.appendChild(el("td", null, j.level));
          row.appendChild(el("td", null, j.scores.map(function (x) { return Math.round(x * 1000) / 1000; }).join(", ") + (j.n_scores > j.scores.length ? " \u2026" : "")));
          row.appendChild(el("td", j.verdict === true ? "ok" : (j.verdict === false ? "bad" : null), j.verdict === null ? "\u2013" : String(j.verdict)));
          row.appendChild(el("td", "critique", j.critique));
          table.appendChild(row);
        });
        card.appendChild(table);
      } else {
        card.appendChild(el("div", "note", "no judgements"));
      }
      view.appendChild(card);
    });
  }

  search.addEventListener("input", fill);
  roundFilter.addEventListener("change", fill);
  list.addEventListener("change", function () { if (list.value !== "") { show(Number(list.value)); } });
  fill();
  var wanted = /^#task=([0-9A-Za-z_-]+)$/.exec(location.hash);
  if (wanted) { select(wanted[1]); }
  else if (tasks.length) { list.value = "0"; show(0); }
})();
"""

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fff}
header{padding:14px 24px;background:#f3f5f8;border-bottom:1px solid #dde2e8}
header h1{margin:0;font-size:20px} nav a{margin-right:14px;color:#0b5cad;text-decoration:none}
main{padding:0 24px 40px;max-width:1320px}
section{margin-top:26px} h2{font-size:17px;border-bottom:1px solid #e4e7eb;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
.note{color:#555;font-size:12.5px;max-width:980px}
.charts{display:flex;flex-wrap:wrap;gap:10px} figure{margin:0;border:1px solid #eceff2;border-radius:4px}
svg.chart{display:block;font-size:11px}
.chart-title{font-weight:600;font-size:12.5px} .tick{fill:#444} .axis-label{fill:#333}
.grid{stroke:#e9ecef;stroke-width:1} .series.off{display:none}
.legend-item{cursor:pointer} .legend-item.off{opacity:.35}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px}
th,td{border:1px solid #e1e4e8;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f6f8fa} table.num td{text-align:right;font-variant-numeric:tabular-nums}
table.num td:first-child{text-align:left} table.kv td:first-child{font-weight:600}
table.kv thead{display:none}
.warn{background:#fff4e5;border:1px solid #f0c36d;padding:6px 10px;margin-top:10px}
.browser{display:flex;gap:16px;align-items:flex-start}
.picker{flex:0 0 380px;display:flex;flex-direction:column;gap:6px}
.picker input,.picker select{font:inherit;width:100%;box-sizing:border-box}
#task-list{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.task-view{flex:1;min-width:0}
dl.lineage{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0}
dl.lineage dt{font-weight:600;color:#444} dl.lineage dd{margin:0;word-break:break-word}
pre.text{margin:0;white-space:pre-wrap;word-break:break-all;background:#f6f8fa;padding:4px 6px;
 border-radius:3px;font:12.5px ui-monospace,Menlo,Consolas,monospace}
.trace{border:1px solid #e1e4e8;border-radius:4px;padding:8px 10px;margin:10px 0}
.trace-head{display:flex;gap:10px;align-items:center;margin-bottom:6px;flex-wrap:wrap}
.meta{color:#555} .badge{padding:1px 7px;border-radius:10px;background:#eee;font-size:12px}
.badge.kept{background:#d8f3e4;color:#0b6b3a} .badge.dropped{background:#fde2e1;color:#9b1c1c}
td.ok{color:#0b6b3a} td.bad{color:#9b1c1c} .sub{font-weight:600;margin-top:6px}
ol.steps{margin:2px 0 4px;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
button.link{background:none;border:none;color:#0b5cad;cursor:pointer;padding:0 4px 0 0;font:inherit;text-decoration:underline}
"""


def render(
    run: Run, max_tasks: int = DEFAULT_MAX_TASKS, max_traces: int = DEFAULT_MAX_TRACES
) -> str:
    rounds = sorted(run.rounds)
    sections = [_overview(run, rounds), _heldout(run), _training(run)]
    extra = sorted({k for m in run.metrics.values() for k in m} - _KNOWN_KEYS)
    if "calibration" in extra:
        sections.append(
            _generic_metric(
                run,
                "calibration",
                "Evaluator calibration",
                "How well the evaluators' confidence matches ground truth each round "
                "(AUROC: 1 separates right from wrong perfectly, 0.5 is chance; ECE: 0 is "
                "calibrated).",
            )
        )
    if rounds:
        sections.append(_data(run, rounds))
    sections.append(_time(run))
    for key in extra:
        if key != "calibration":
            sections.append(_generic_metric(run, key, key, "A per-round metric from summary.json."))
    data = sample_data(run, max_tasks, max_traces)
    shown = sum(c["shown"] for c in data["rounds"].values())
    total = sum(c["tasks"] for c in data["rounds"].values())
    sections.append(
        _section(
            "samples",
            "Sample browser",
            _BROWSER,
            f"{shown} of {total} tasks embedded (at most {max_tasks} per round, spread over "
            f"difficulty levels and kept / not kept; at most {max_traces} traces per task). "
            "Search by task id or prompt; select a task to see its lineage, traces, judgements "
            "and decisions. \u2713 = at least one trace kept.",
        )
    )
    title = f"reasonloop report: {run.root.name}"
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
    )
    nav = "".join(
        f'<a href="#{a}">{escape(t)}</a>'
        for a, t in (
            ("overview", "run"),
            ("heldout", "held-out"),
            ("training", "training"),
            ("data", "data"),
            ("time", "time"),
            ("samples", "samples"),
        )
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style></head>\n"
        f"<body><header><h1>{escape(title)}</h1><nav>{nav}</nav></header>\n<main>\n"
        + "\n".join(s for s in sections if s)
        + '\n</main>\n<script type="application/json" id="sample-data">'
        + embed_json(data)
        + f"</script>\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    max_tasks: int = DEFAULT_MAX_TASKS,
    max_traces: int = DEFAULT_MAX_TRACES,
) -> Path:
    run = load_run(run_dir)
    path = Path(out) if out else run.root / "report.html"
    # "replace": a lone surrogate in model text must not stop the page from being written.
    atomic_write_bytes(path, render(run, max_tasks, max_traces).encode("utf-8", "replace"))
    return path


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def cmd_report(args: argparse.Namespace) -> int:
    try:
        path = write_report(args.run_dir, args.out, args.max_tasks, args.max_traces)
    except NotARunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {path} ({path.stat().st_size / 1024:,.0f} KB); open it in a browser (works offline)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML report of a run (charts and a sample browser)"
    )
    p.add_argument("run_dir")
    p.add_argument("--out", help="output file (default RUN_DIR/report.html)")
    p.add_argument(
        "--max-tasks",
        type=_positive,
        default=DEFAULT_MAX_TASKS,
        help=f"tasks per round embedded in the sample browser (default {DEFAULT_MAX_TASKS})",
    )
    p.add_argument(
        "--max-traces",
        type=_positive,
        default=DEFAULT_MAX_TRACES,
        help=f"traces shown per task (default {DEFAULT_MAX_TRACES})",
    )
    p.set_defaults(fn=cmd_report)
