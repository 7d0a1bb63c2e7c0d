"""A run killed with SIGKILL (a real subprocess, really killed) resumes to the same records.

Kill points cover generation, training, the middle of an atomic write, and the gap between a
checkpoint landing and the manifest recording it. After each kill the same command is run
again; the final Parquet records and held-out metrics must equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import signal
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
        assert set(m["cpu_seconds"]) == set(m["seconds"])
        assert 0 < m["cpu_seconds"]["train"] and 0 < m["cpu_seconds"]["total"]
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


def _kill_at_random(out: Path, rng: random.Random) -> tuple[str, int]:
    """One attempt: either a fault point hit a random number of times, or a SIGKILL from outside
    at a random moment after the imports (whatever the run is doing then)."""
    if rng.random() < 0.5:
        point, most = rng.choice([("solve", 4), ("train", 30), ("write", 8), ("checkpoint", 2)])
        fault = f"{point}:{rng.randint(1, most)}"
        return fault, _run(out, fault).returncode
    env = {k: v for k, v in os.environ.items() if k != "REASONLOOP_FAULT"}
    cmd = [sys.executable, "-m", "reasonloop.cli", "run", "--preset", "easy-to-hard"]
    p = subprocess.Popen(
        [*cmd, "--out", str(out), "--quiet", *SMALL],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert p.stdout is not None
    p.stdout.readline()  # printed once the config is loaded and the loop imported
    delay = rng.uniform(0.0, 1.5)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
    p.stdout.close()
    return f"external kill after {delay:.2f} s", p.returncode


def test_twenty_random_kills_each_resume(tmp_path, reference):
    """20 kills at random moments (generation, training, record writing, checkpointing, or
    whatever is running when an outside SIGKILL lands). After each kill the run is started
    again; whenever it completes, its records must equal the uninterrupted run's."""
    rng = random.Random(int(os.environ.get("REASONLOOP_KILL_SEED", "0")))
    kills, runs, log = 0, 0, []
    out = tmp_path / f"run{runs}"
    while kills < 20:
        what, rc = _kill_at_random(out, rng)
        log.append(f"{out.name}: {what}: {'killed' if rc == -9 else f'exit {rc}'}")
        assert rc in (0, -9), "\n".join(log)
        if rc == -9:
            kills += 1
            continue
        # The fault came too late to land: the run finished. It must be the reference run.
        assert _records(out) == _records(reference), "\n".join(log)
        assert _metrics(out) == _metrics(reference), "\n".join(log)
        runs += 1
        out = tmp_path / f"run{runs}"
    p = _run(out)
    assert p.returncode == 0, p.stderr
    assert _records(out) == _records(reference), "\n".join(log)
    assert _metrics(out) == _metrics(reference), "\n".join(log)
    assert not list(out.rglob("*.tmp")) and not (out / "tmp").exists()
    print("\n".join(log))


def test_same_seed_twice_gives_identical_records(tmp_path, reference):
    p = _run(tmp_path / "again")
    assert p.returncode == 0, p.stderr
    assert _records(tmp_path / "again") == _records(reference)
    assert _metrics(tmp_path / "again") == _metrics(reference)
    a = json.loads((reference / "summary.json").read_text())["rounds"]
    b = json.loads((tmp_path / "again" / "summary.json").read_text())["rounds"]
    assert [m["train"]["loss_last"] for m in a] == [m["train"]["loss_last"] for m in b]
