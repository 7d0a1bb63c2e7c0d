"""Data-parallel training under torchrun: real processes (`python -m torch.distributed.run`, two
ranks, gloo on CPU), compared with the same work done by one plain process.

Two ranks each compute half of every global batch and sum their share-weighted gradients, so
they step on the gradient one process computes for the whole batch; only the order of float
additions differs, which leaves the weights a few 1e-7 to 1e-6 apart. The loop's records after
training are compared exactly: a token flips only if a sampling probability sits that close to a
threshold, which these runs do not hit (pytest's diff would name the file if one did).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from small_run import SMALL
from torchrun_train import MODEL, SFT_STEPS

from reasonloop.models.tiny import TinyModel

TESTS = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TOLERANCE = 1e-5
"""Largest weight difference allowed between the two-rank and the one-process result (float32)."""
RUN_ARGS = ["run", "--preset", "easy-to-hard", "--quiet", "--rounds", "1", "--seed", "3"]
for _key, _value in SMALL.items():
    RUN_ARGS += ["--set", f"{_key}={json.dumps(_value)}"]


def _env(fault: str | None = None) -> dict[str, str]:
    # A test launched by torchrun itself must not hand its own rank to the job it starts.
    drop = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "REASONLOOP_FAULT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env["REASONLOOP_FAULT"] = fault
    return env


def _run(cmd: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, env=_env(fault), cwd=TESTS.parent, capture_output=True, text=True, timeout=300
    )


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_two_ranks_train_the_weights_one_process_trains(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    script = str(TESTS / "torchrun_train.py")
    p = _run([sys.executable, script, str(one)])
    assert p.returncode == 0, p.stderr[-3000:]
    p = _run([*TORCHRUN, script, str(two)])
    assert p.returncode == 0, p.stderr[-3000:]

    diffs = {
        "ppo-critic": _max_diff(*(load_file(d / "ppo-critic.safetensors") for d in (one, two)))
    }
    for name in ("sft", "dpo", "grpo", "ppo"):
        a, b = _weights(one / name), _weights(two / name)
        diffs[name] = _max_diff(a, b)
        assert diffs[name] < TOLERANCE, f"{name}: max |w_1 - w_2| = {diffs[name]:.3g}"
        # Every per-step curve is the whole batch's, summed over the ranks' shares.
        curves_1 = json.loads((one / f"{name}.json").read_text())
        curves_2 = json.loads((two / f"{name}.json").read_text())
        assert curves_1.keys() == curves_2.keys() and curves_1["steps"] == curves_2["steps"]
        for key, values in curves_1.items():
            if key != "steps":
                assert values == pytest.approx(curves_2[key], abs=1e-5), key
    print(f"\nmax |w_1proc - w_2ranks|: {diffs}")
    assert diffs["ppo-critic"] < TOLERANCE
    # The tolerance is far below how far training moved the weights.
    moved = _max_diff(TinyModel.create(MODEL, seed=0).module.state_dict(), _weights(one / "sft"))
    assert moved > 1000 * TOLERANCE
    assert json.loads((two / "sft.json").read_text())["steps"] == SFT_STEPS


def _records(out: Path) -> dict[str, list[dict]]:
    return {str(f.relative_to(out)): pq.read_table(f).to_pylist() for f in out.rglob("*.parquet")}


def _files(out: Path) -> list[str]:
    return sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())


def test_run_under_torchrun_matches_one_process_and_resumes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    p = _run([sys.executable, "-m", "reasonloop.cli", *RUN_ARGS, "--out", str(one)])
    assert p.returncode == 0, p.stderr[-3000:]

    # Under torchrun, rank 0 kills itself during round 1's training (after 45 optimiser steps:
    # the seed's 40 and 5 of round 1's); rank 1 dies at its first write in the run directory.
    entry = str(TESTS / "torchrun_entry.py")
    p = _run([*TORCHRUN, entry, *RUN_ARGS, "--out", str(two)], fault="train:45")
    assert p.returncode != 0
    assert "wrote in the run directory" not in p.stderr, p.stderr[-3000:]
    assert "exitcode  : -9" in p.stderr, p.stderr[-3000:]  # the fault fired on rank 0
    manifest = json.loads((two / "manifest.json").read_text())
    assert "train" in manifest["rounds"]["0"]["phases"]
    assert "train" not in manifest["rounds"]["1"]["phases"]

    # The same command resumes it, in the documented form.
    p = _run([*TORCHRUN, "-m", "reasonloop.cli", *RUN_ARGS, "--out", str(two)])
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("round  pass@1") == 1  # only rank 0 reports

    assert _files(two) == _files(one)
    assert _records(two) == _records(one)
    diffs = {
        r: _max_diff(_weights(one / "checkpoints" / r), _weights(two / "checkpoints" / r))
        for r in ("r000", "r001")
    }
    print(f"\nmax |w_1proc - w_2ranks| per checkpoint: {diffs}")
    assert max(diffs.values()) < TOLERANCE, diffs
    rounds_1 = json.loads((one / "summary.json").read_text())["rounds"]
    rounds_2 = json.loads((two / "summary.json").read_text())["rounds"]
    for m1, m2 in zip(rounds_1, rounds_2, strict=True):
        assert m1["heldout"] == m2["heldout"] and m1["data"] == m2["data"]
        assert m1["train"]["steps"] == m2["train"]["steps"]
        assert abs(m1["train"]["loss_last"] - m2["train"]["loss_last"]) < 1e-5
