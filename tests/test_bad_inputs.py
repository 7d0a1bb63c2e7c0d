"""Bad inputs to `reasonloop run` and `eval`: a clear message naming the file, line or field, a
non-zero exit, and nothing half-written (no run directory is created for a run that cannot
start; a foreign checkpoint is refused, not overwritten)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from small_run import TINIEST, cli_sets

from reasonloop.cli import main
from reasonloop.config import ModelConfig
from reasonloop.models.tiny import TinyModel


def _run(out: Path, *extra: str, preset: str = "rft") -> int:
    sets = cli_sets(TINIEST)
    argv = ["run", "--preset", preset, "--out", str(out), "--quiet", "--rounds", "1", *sets]
    return main([*argv, *extra])


def _digest(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def test_task_file_with_a_broken_line_names_the_line(tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", answer: 4}\n')
    out = tmp_path / "run"
    assert _run(out, "--set", f"tasks.family=file:{tasks}") == 2
    err = capsys.readouterr().err
    assert f"{tasks}:2: invalid JSON" in err and "tasks.family" in err
    assert not out.exists()


def test_missing_hf_model_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code = _run(
        out,
        "--set",
        "model.backend=hf",
        "--set",
        "model.abacus=0",
        "--set",
        f"model.path={tmp_path / 'nowhere'}",
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "model.path" in err and "nowhere" in err and "config.json" in err
    assert not out.exists()


def test_pickled_hf_checkpoint_is_refused(tmp_path, capsys):
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    # Loading would unpickle this file; it must never be opened.
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04not a real pickle")
    out = tmp_path / "run"
    code = _run(out, "--set", "model.backend=hf", "--set", f"model.path={model_dir}")
    assert code == 2
    err = capsys.readouterr().err
    assert "safetensors" in err and str(model_dir) in err
    assert not out.exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "run"
    assert _run(out) == 0
    return out


def test_foreign_checkpoint_is_refused_not_overwritten(tmp_path, finished, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    foreign = TinyModel.create(ModelConfig(dim=48, n_layers=2, n_heads=2), seed=0)
    shutil.rmtree(out / "checkpoints/r001")
    foreign.save(out / "checkpoints/r001")
    before = _digest(out)
    capsys.readouterr()
    assert _run(out) == 2
    err = capsys.readouterr().err
    assert "checkpoints/r001" in err and "does not match" in err and "dim 48 there, 32" in err
    assert _digest(out) == before
    assert main(["eval", str(out), "--round", "1"]) == 2
    assert "does not match" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "{tmp}/nowhere"], "not a run directory"),
        (["eval", "{run}", "--round", "7"], "--round 7: no checkpoint for that round"),
    ],
)
def test_eval_of_a_missing_run_or_round(tmp_path, finished, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, run=finished) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_eval_of_a_damaged_checkpoint(tmp_path, finished, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "checkpoints/r001/config.json").write_text("{not json")
    assert main(["eval", str(out), "--round", "1"]) == 2
    err = capsys.readouterr().err
    assert "round 1 checkpoint" in err and "config.json" in err
