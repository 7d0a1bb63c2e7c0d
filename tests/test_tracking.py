"""`report_to`: TensorBoard, MLflow and W&B (offline) receive each round's metrics under
summary.json's names, read back here with each tool's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from small_run import TINIEST, cli_sets

from reasonloop.cli import main
from reasonloop.report.tracking import flatten, mlflow_name

pytest.importorskip("tensorboard", reason="tracking extra not installed")
pytest.importorskip("mlflow", reason="tracking extra not installed")
pytest.importorskip("wandb", reason="tracking extra not installed")


def _run(out: Path, rounds: int, report_to: str) -> int:
    sets = cli_sets(TINIEST)
    return main(
        ["run", "--preset", "rft", "--out", str(out), "--quiet", "--rounds", str(rounds)]
        + sets
        + ["--set", f"report_to={report_to}"]
    )


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tracked") / "run"
    # One round with TensorBoard only, then resumed for a second round with all three: the
    # trackers added on resume must also get round 0 and 1.
    import os

    for k in ("WANDB_MODE", "WANDB_API_KEY", "MLFLOW_TRACKING_URI"):
        os.environ.pop(k, None)
    assert _run(out, 1, "[tensorboard]") == 0
    assert _run(out, 2, "[tensorboard,mlflow,wandb]") == 0
    return out


def _want(out: Path) -> list[dict[str, float]]:
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    assert [m["round"] for m in rounds] == [0, 1, 2]
    return [flatten(m) for m in rounds]


def test_tensorboard_has_every_round_once(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    want = _want(tracked)
    acc = EventAccumulator(str(tracked / "tensorboard"))
    acc.Reload()
    for name in ("heldout.pass@1", "train.loss_last", "seconds.total", "data.kept"):
        events = acc.Scalars(name)
        assert [e.step for e in events] == [0, 1, 2], name
        assert [e.value for e in events] == pytest.approx([w[name] for w in want], rel=1e-6)
    assert "heldout.by_level.3" in acc.Tags()["scalars"]


def test_mlflow_has_the_same_metrics(tracked):
    from mlflow.tracking import MlflowClient

    want = _want(tracked)
    client = MlflowClient(tracking_uri=f"sqlite:///{(tracked / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("reasonloop")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    hist = client.get_metric_history(run.info.run_id, mlflow_name("heldout.pass@1"))
    assert sorted(m.step for m in hist) == [0, 1, 2]
    by_step = {m.step: m.value for m in hist}
    assert [by_step[r] for r in range(3)] == pytest.approx([w["heldout.pass@1"] for w in want])
    assert run.data.params["model.dim"] == "32"


def _wandb_history(path: Path) -> list[dict]:
    """History rows of an offline W&B run file (W&B's LevelDB-style record log of protobuf
    `Record`s: 7-byte file header, 32 KiB blocks, 7-byte record headers, records split as
    FULL=1 or FIRST=2 / MIDDLE=3 / LAST=4)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    rows, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in rec.history.item
                    }
                )
    return rows


def test_wandb_offline_run_has_every_round(tracked):
    runs = list((tracked / "wandb").glob("offline-run-*/*.wandb"))
    assert len(runs) == 1, runs
    rows = _wandb_history(runs[0])
    want = _want(tracked)
    assert [r["_step"] for r in rows] == [0, 1, 2]
    for row, w in zip(rows, want, strict=True):
        assert row["heldout.pass@1"] == pytest.approx(w["heldout.pass@1"])
        assert row["train.loss_last"] == pytest.approx(w["train.loss_last"])
    manifest = json.loads((tracked / "manifest.json").read_text())
    assert all(
        v["tracked"] == ["mlflow", "tensorboard", "wandb"] for v in manifest["rounds"].values()
    )


def test_tracker_not_installed_is_named(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    # Simulates a machine without the package; everything else about the run is real.
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    out = tmp_path / "run"
    assert _run(out, 1, "[wandb]") == 2
    err = capsys.readouterr().err
    assert "report_to ['wandb']: not installed" in err and "pip install wandb" in err
    assert not out.exists()
