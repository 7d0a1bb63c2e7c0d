"""A run killed with SIGKILL (a real subprocess, really killed) resumes to the same records.

Kill points cover generation, training, the middle of an atomic write, and the gap between a
checkpoint landing and the manifest recording it. After each kill the same command is run
again; the final Parquet records and held-out metrics must equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

SMALL = [
    "--rounds",
    "2",
    "--seed",
    "3",
    "--set",
    "model.dim=32",
    "--set",
    "model.n_layers=2",
    "--set",
    "model.n_heads=2",
    "--set",
    "seed_train.steps=40",
    "--set",
    "train.steps=12",
    "--set",
    "train.batch_size=16",
    "--set",
    "tasks.seed_examples=200",
    "--set",
    "tasks.heldout_per_level=8",
    "--set",
    "tasks.seed_levels=[1,2,3]",
    "--set",
    "tasks.heldout_levels=[1,2,3,4]",
    "--set",
    "creator.per_round=24",
    "--set",
    "reasoner.samples=3",
    "--set",
    "reasoner.batch_size=32",
    "--set",
    "model.threads=1",
]


def _run(out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REASONLOOP_FAULT"}
    if fault:
        env["REASONLOOP_FAULT"] = fault
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "reasonloop.cli",
            "run",
            "--preset",
            "easy-to-hard",
            "--out",
            str(out),
            "--quiet",
            *SMALL,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _records(out: Path) -> dict[str, list[dict]]:
    files = sorted((out / "rounds").rglob("*.parquet")) + [out / "heldout.parquet"]
    return {str(f.relative_to(out)): pq.read_table(f).to_pylist() for f in files}


def _metrics(out: Path) -> list[dict]:
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    return [
        {k: m[k] for k in ("round", "heldout", "data", "frontier", "next_frontier")} for m in rounds
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    p = _run(out)
    assert p.returncode == 0, p.stderr
    return out


@pytest.mark.parametrize("fault", ["train:30", "solve:2", "write:7", "checkpoint:2", "train:50"])
def test_killed_run_resumes_to_identical_records(tmp_path, reference, fault):
    out = tmp_path / "run"
    p = _run(out, fault)
    assert p.returncode == -9, f"the fault {fault} did not fire: {p.returncode} {p.stderr[-500:]}"
    assert (
        not (out / "summary.json").exists()
        or not json.loads((out / "summary.json").read_text())["complete"]
    )
    p = _run(out)
    assert p.returncode == 0, p.stderr
    assert _records(out) == _records(reference)
    assert _metrics(out) == _metrics(reference)
    assert not list(out.rglob("*.tmp")) and not (out / "tmp").exists()


def test_finished_rounds_are_not_recomputed(tmp_path, reference):
    out = tmp_path / "run"
    assert _run(out).returncode == 0
    stamp = {f: f.stat().st_mtime_ns for f in (out / "rounds").rglob("*") if f.is_file()}
    p = _run(out)
    assert p.returncode == 0, p.stderr
    assert {f: f.stat().st_mtime_ns for f in (out / "rounds").rglob("*") if f.is_file()} == stamp


def test_different_config_in_same_dir_is_refused(tmp_path, reference):
    out = tmp_path / "run"
    assert _run(out).returncode == 0
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "reasonloop.cli",
            "run",
            "--preset",
            "rft",
            "--out",
            str(out),
            "--quiet",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2
    assert (
        "different config" in p.stderr
        and "`evaluator.kind`: 'consensus' in the run, 'gold' now" in p.stderr
    )


def test_summary_and_plot_are_written(reference):
    s = json.loads((reference / "summary.json").read_text())
    assert s["complete"] and [m["round"] for m in s["rounds"]] == [0, 1, 2]
    assert s["beyond_seed_levels"] == [4]
    for m in s["rounds"]:
        h = m["heldout"]
        assert set(h["by_level"]) == {"1", "2", "3", "4"}
        assert 0.0 <= h["pass@1"] <= 1.0 and h["beyond_seed"] == h["by_level"]["4"]
        assert set(m["seconds"]) == {"propose", "solve", "process", "train", "eval", "total"}
        assert m["tokens_per_s"]["training"] > 0 and m["tokens_per_s"]["generation"] > 0
        # Label-free after the seed: only round 0 trains on gold.
        assert m["gold_labels_in_training"] == (m["round"] == 0)
    assert (reference / "heldout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Lineage: every kept trace's task is in the round's tasks, produced by the previous model.
    tasks = pq.read_table(reference / "rounds/r001/tasks.parquet").to_pylist()
    traces = pq.read_table(reference / "rounds/r001/traces.parquet").to_pylist()
    assert {t["task_id"] for t in traces} <= {t["id"] for t in tasks}
    assert {t["producer"] for t in traces} == {"reasoner:r0"}
    held = {t["id"] for t in pq.read_table(reference / "heldout.parquet").to_pylist()}
    assert not held & {t["id"] for t in tasks}


def test_eval_command_reads_the_run(reference):
    p = subprocess.run(
        [sys.executable, "-m", "reasonloop.cli", "eval", str(reference), "--round", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    want = json.loads((reference / "rounds/r001/metrics.json").read_text())["heldout"]
    assert got["by_level"] == want["by_level"]


@pytest.mark.parametrize(
    "damage",
    [
        "rounds/r001/traces.parquet",
        "rounds/r000/sft.parquet",
        "rounds/r002/metrics.json",
        "heldout.parquet",
        "checkpoints/r001",
        "checkpoints/r000/model.safetensors",
    ],
)
def test_damaged_file_is_rebuilt_from_last_good_state(tmp_path, reference, damage):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    target = out / damage
    if target.is_dir():
        shutil.rmtree(target)
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])  # a truncated file
    p = _run(out)
    assert p.returncode == 0, p.stderr
    name = damage.split("/")[-1]
    assert name in p.stdout and ("redoing" in p.stdout or "writing it again" in p.stdout)
    assert _records(out) == _records(reference)
    assert _metrics(out) == _metrics(reference)
