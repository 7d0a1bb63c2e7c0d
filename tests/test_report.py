"""`reasonloop report`: the HTML page of a real short run, read back as a parser and a browser
would. The injection test puts hostile text in the run's records and checks it shows as text
and never runs."""

from __future__ import annotations

import json
import re
from html import unescape
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import pytest
from cdp import Chromium, find_chromium
from small_run import GRPO, INJECTION, copy_run, inject, small_run

from reasonloop.cli import main
from reasonloop.loop.store import read_records
from reasonloop.report.svg import fmt
from reasonloop.types import Decision, Judgement, Task, Trace


class _Tables(HTMLParser):
    """Each section's tables as rows of cell text, and the JSON data block."""

    def __init__(self) -> None:
        super().__init__()
        self.section = ""
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.cell: list[str] | None = None
        self.row: list[str] | None = None
        self.in_data = False
        self.data = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id", "")
        elif tag == "table":
            self.tables.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "script" and a.get("type") == "application/json":
            self.in_data = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.tables[self.section][-1].append(self.row)
            self.row = None
        elif tag == "script":
            self.in_data = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        if self.in_data:
            self.data += data


def parse(html: str) -> _Tables:
    p = _Tables()
    p.feed(html)
    return p


def rows_by_round(table: list[list[str]]) -> dict[int, dict[str, str]]:
    head, *rows = table
    return {int(r[0]): dict(zip(head, r, strict=True)) for r in rows}


def report(run: Path, out: Path, *args: str) -> str:
    assert main(["report", str(run), "--out", str(out), *args]) == 0
    return out.read_text()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return small_run(tmp_path_factory)


@pytest.fixture(scope="module")
def page(run_dir, tmp_path_factory) -> str:
    return report(run_dir, tmp_path_factory.mktemp("report") / "report.html")


@pytest.fixture(scope="module")
def injected(run_dir, tmp_path_factory) -> tuple[Path, str, str, str]:
    """A copy of the run whose round-1 records carry hostile text; its report's path."""
    run = copy_run(run_dir, tmp_path_factory.mktemp("injected") / "run")
    task, trace = inject(run, 1, INJECTION)
    out = run / "report.html"
    assert main(["report", str(run)]) == 0  # the default output path
    return out, out.read_text(), task.id, trace.id


def test_heldout_tables_match_summary(run_dir, page):
    summary = json.loads((run_dir / "summary.json").read_text())
    t = parse(page).tables
    held = rows_by_round(t["heldout"][0])
    data = rows_by_round(t["data"][1])
    secs = rows_by_round(t["time"][0])
    assert sorted(held) == [m["round"] for m in summary["rounds"]]
    for m in summary["rounds"]:
        r = m["round"]
        assert held[r]["pass@1"] == f"{m['heldout']['pass@1']:.1%}"
        for lv, v in m["heldout"]["by_level"].items():
            star = "*" if int(lv) in summary["seed_levels"] else ""
            assert held[r][f"L{lv}{star}"] == f"{v:.1%}"
        assert data[r]["kept"] == fmt(m["data"]["kept"])
        assert data[r]["traces"] == fmt(m["data"]["traces"])
        for reason, n in m["data"]["dropped"].items():
            assert data[r][f"dropped: {reason}"] == fmt(n)
        assert secs[r]["total"] == fmt(m["seconds"]["total"])
        assert secs[r]["train"] == fmt(m["seconds"]["train"])
    assert any(m["data"]["dropped"] for m in summary["rounds"]), "the run should drop something"


def curves(section: str) -> dict[str, list[int]]:
    """{chart title: [points of each series, legend order]} of the line charts of a section."""
    out = {}
    for svg in re.findall(r"<svg.*?</svg>", section, re.S):
        title = re.search(r"<title>([^<]*)</title>", svg).group(1)
        names = re.findall(r'class="legend-item" data-series="(\d+)".*?class="tick">([^<]*)<', svg)
        lines = dict(
            re.findall(
                r'class="series" data-series="(\d+)"[^>]*>\s*<polyline[^>]*points="([^"]+)"', svg
            )
        )
        out[title] = {name: len(lines.get(i, "").split()) for i, name in names}
    return out


def test_training_curves_from_manifest(run_dir, page):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    steps = {r: len(m["phases"]["train"]["losses"]) for r, m in manifest["rounds"].items()}
    training = curves(page[page.index('id="training"') : page.index('id="data"')])
    # The seed round has its own chart; later rounds share one; one point per step.
    assert training == {
        "loss per step (seed round)": {"round 0": steps["0"]},
        "loss per step (rounds 1-2)": {"round 1": steps["1"], "round 2": steps["2"]},
    }
    assert steps["0"] > 1 and steps["1"] > 1
    # No RL or DPO curve in an SFT run.
    assert "clip fraction" not in page and "KL to the reference" not in page


def test_no_external_loads(page):
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:[a-z]+:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert csp and unescape(csp.group(1)).startswith("default-src 'none';")


def test_embedded_json_has_the_tasks_with_their_records(run_dir, page):
    data = json.loads(parse(page).data)
    by_round: dict[int, list[dict]] = {}
    for t in data["tasks"]:
        by_round.setdefault(t["round"], []).append(t)
    for rdir in sorted((run_dir / "rounds").iterdir()):
        r = int(rdir.name[1:])
        tasks = {t.id: t for t in read_records(rdir / "tasks.parquet", Task)}
        traces = read_records(rdir / "traces.parquet", Trace)
        verdicts = {j.trace_id: j for j in read_records(rdir / "judgements.parquet", Judgement)}
        decisions = {d.trace_id: d for d in read_records(rdir / "decisions.parquet", Decision)}
        shown = by_round[r]
        assert len(shown) == min(40, len(tasks)) == data["rounds"][str(r)]["shown"]
        for t in shown:
            src = tasks[t["id"]]
            assert (t["prompt"], t["answer"], t["difficulty"]) == (
                src.prompt,
                src.answer,
                src.difficulty,
            )
            mine = [x for x in traces if x.task_id == t["id"]]
            assert [x["id"] for x in t["traces"]] == [x.id for x in mine][:12]
            for x in t["traces"]:
                src_trace = next(y for y in mine if y.id == x["id"])
                assert x["text"] == src_trace.text and x["producer"] == src_trace.producer
                j = verdicts[x["id"]]
                assert x["judgements"][0]["verdict"] == j.verdict
                assert x["judgements"][0]["evaluator"] == j.evaluator
                assert x["decision"] == {
                    "kept": decisions[x["id"]].kept,
                    "reason": decisions[x["id"]].reason,
                }


def test_max_tasks_caps_the_page_and_spreads_levels(run_dir, page, tmp_path):
    small = report(run_dir, tmp_path / "r.html", "--max-tasks", "5", "--max-traces", "2")
    data = json.loads(parse(small).data)
    r0 = [t for t in data["tasks"] if t["round"] == 0]
    assert len(r0) == 5 and {t["difficulty"] for t in r0} == {1, 2, 3}
    assert all(len(t["traces"]) <= 2 for t in data["tasks"])
    assert len(data["tasks"]) == 5 * len(data["rounds"])
    assert len(small) < len(page)


def test_injected_text_is_escaped(injected):
    _, html, task_id, trace_id = injected
    assert INJECTION not in html
    assert "<img" not in html and "alert(1)</script>" not in html
    assert html.count("<script") == 2  # the data block and the page's own script
    data = json.loads(parse(html).data)
    task = next(t for t in data["tasks"] if t["id"] == task_id)
    trace = next(x for x in task["traces"] if x["id"] == trace_id)
    assert task["prompt"] == trace["text"] == trace["judgements"][0]["critique"] == INJECTION


def test_calibration_and_later_keys_are_shown_when_present(run_dir, page, tmp_path):
    assert "Evaluator calibration" not in page
    run = copy_run(run_dir, tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    for m in summary["rounds"]:
        m["calibration"] = {"consensus": {"auroc": 0.5 + m["round"] / 10, "ece": 0.0123}}
        m["novelty"] = {"score": 41.5}
    (run / "summary.json").write_text(json.dumps(summary))
    html = report(run, tmp_path / "r.html")
    t = parse(html).tables
    cal = rows_by_round(t["metric-calibration"][0])
    assert cal[2]["consensus.auroc"] == "0.7" and cal[0]["consensus.ece"] == "0.0123"
    assert "Evaluator calibration" in html
    assert rows_by_round(t["metric-novelty"][0])[1]["score"] == "41.5"


def test_grpo_run_shows_reward_side_curves(tmp_path_factory, tmp_path):
    run = small_run(tmp_path_factory, "grpo-zero", rounds=1, extra=GRPO)
    html = report(run, tmp_path / "r.html")
    manifest = json.loads((run / "manifest.json").read_text())
    train = manifest["rounds"]["1"]["phases"]["train"]
    found = curves(html[html.index('id="training"') : html.index('id="data"')])
    assert found["KL to the reference per step"] == {"round 1": len(train["kl"])}
    assert found["clip fraction per step"] == {"round 1": len(train["clip_fraction"])}
    table = rows_by_round(parse(html).tables["training"][0])
    summary = json.loads((run / "summary.json").read_text())
    assert table[1]["reward_mean"] == fmt(summary["rounds"][1]["train"]["reward_mean"])
    assert table[1]["kl_last"] == fmt(summary["rounds"][1]["train"]["kl_last"])


def test_unfinished_run_still_reports(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    (run / "summary.json").unlink()
    for name in ("decisions.parquet", "metrics.json", "sft.parquet", "pairs.parquet"):
        (run / "rounds" / "r002" / name).unlink()
    html = report(run, tmp_path / "r.html")
    assert "no summary.json yet" in html
    held = rows_by_round(parse(html).tables["heldout"][0])
    assert sorted(held) == [0, 1]  # metrics.json of the finished rounds
    data = rows_by_round(parse(html).tables["data"][1])
    assert data[2]["kept"] == "0" and data[2]["tasks"] == "24"


@pytest.mark.parametrize("bad", ["missing", "file", "empty"])
def test_bad_run_dir(tmp_path, capsys, bad):
    path = tmp_path / "x"
    if bad == "file":
        path.write_text("")
    elif bad == "empty":
        path.mkdir()
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "error:" in err


# -- in a real browser --------------------------------------------------------------------------


def _nonblank(png: bytes) -> tuple[float, int]:
    """(share of pixels with ink, number of clearly coloured pixels) of a PNG."""
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    inked = float((px.sum(axis=2) < 700).mean())
    colour = int(((px.max(axis=2) - px.min(axis=2)) > 80).sum())
    return inked, colour


def test_page_in_headless_chromium(injected):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium binary (apt-get install -y chromium); browser test not run")
    path, _, task_id, trace_id = injected
    with Chromium(binary, width=1280, height=900) as b:
        b.open(path.resolve().as_uri())
        assert b.evaluate("document.readyState") == "complete"
        assert b.problems() == []
        inked, colour = _nonblank(b.screenshot())
        assert inked > 0.02 and colour > 300, (inked, colour)

        # Select the hostile task through the list, as a user would.
        shown = b.evaluate(
            f"""(() => {{
              const data = JSON.parse(document.getElementById("sample-data").textContent);
              const i = data.tasks.findIndex(t => t.id === {json.dumps(task_id)} && t.round === 1);
              const list = document.getElementById("task-list");
              list.value = String(i);
              list.dispatchEvent(new Event("change", {{bubbles: true}}));
              const view = document.getElementById("task-view");
              return {{
                heading: view.querySelector("h3").textContent,
                traces: view.querySelectorAll(".trace").length,
                expected: data.tasks[i].traces.length,
                texts: [...view.querySelectorAll("pre.trace-text")].map(p => p.textContent),
                prompt: view.querySelector("dl.lineage pre").textContent,
                images: document.images.length,
                scripts: document.scripts.length,
              }};
            }})()"""
        )
        assert task_id in shown["heading"]
        assert shown["traces"] == shown["expected"] >= 1
        assert INJECTION in shown["texts"] and shown["prompt"] == INJECTION
        assert shown["images"] == 0 and shown["scripts"] == 2
        assert trace_id in b.evaluate("document.getElementById('task-view').textContent")

        # Search narrows the list; a legend entry hides its series.
        n = b.evaluate(
            f"""(() => {{
              const q = document.getElementById("task-search");
              q.value = {json.dumps(task_id[:12])};
              q.dispatchEvent(new Event("input", {{bubbles: true}}));
              return document.getElementById("task-list").options.length;
            }})()"""
        )
        assert n >= 1 and n < 10
        hidden = b.evaluate(
            """(() => {
              const item = document.querySelector("#heldout .legend-item");
              item.dispatchEvent(new MouseEvent("click", {bubbles: true}));
              const s = document.querySelector('#heldout .series[data-series="0"]');
              return getComputedStyle(s).display;
            })()"""
        )
        assert hidden == "none"
        assert b.problems() == []


def test_chromium_test_can_fail(tmp_path):
    """The browser harness reports a page that runs a script or throws: the checks above are
    not vacuous."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium binary (apt-get install -y chromium); browser test not run")
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><p>x</p><script>alert(1)</script><script>console.error('boom')</script>"
        "<script>null.f()</script>"
    )
    with Chromium(binary) as b:
        b.open(bad.as_uri())
        problems = " ".join(b.problems())
    assert "dialog" in problems and "boom" in problems and "exception" in problems


def test_embedded_json_cannot_close_its_block():
    from reasonloop.report.html import embed_json

    hostile = {"t": "<!-- </script > </SCRIPT> & \u2028 \ud800 \x00", "k<": [">"]}
    text = embed_json(hostile)
    assert not set("<>&") & set(text) and "\u2028" not in text
    assert json.loads(text) == hostile
