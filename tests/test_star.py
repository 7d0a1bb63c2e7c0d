"""STaR's rationalisation path: failures are retried with the gold answer as a hint; rationales
that reach it are kept and trained on with the *unhinted* prompt."""

from __future__ import annotations

import pyarrow.parquet as pq

from reasonloop.config import load_config
from reasonloop.loop.run import run
from reasonloop.reasoner.hint import HINT_MARK


def test_rationalisation_records(tmp_path):
    cfg = load_config(
        "star",
        overrides={
            "rounds": 1,
            "model": {"dim": 48, "n_layers": 2, "n_heads": 2, "threads": 1},
            "seed_train": {"steps": 250, "batch_size": 32, "lr": 0.003},
            "train": {"steps": 5, "batch_size": 16},
            "tasks": {
                "seed_levels": [1, 2],
                "seed_examples": 600,
                "heldout_levels": [1, 2],
                "heldout_per_level": 10,
            },
            "creator": {"per_round": 40, "start_level": 2, "levels_ahead": 1},
            "reasoner": {"samples": 2, "batch_size": 64},
        },
    )
    out = tmp_path / "run"
    run(cfg, out, show_progress=False, log=lambda *_: None)
    seed_sft = pq.read_table(out / "rounds/r000/sft.parquet").to_pylist()
    assert any(HINT_MARK in ex["prompt"] for ex in seed_sft), (
        "the seed teaches the model to read hints"
    )
    traces = pq.read_table(out / "rounds/r001/traces.parquet").to_pylist()
    judg = {
        j["trace_id"]: j for j in pq.read_table(out / "rounds/r001/judgements.parquet").to_pylist()
    }
    dec = {
        d["trace_id"]: d for d in pq.read_table(out / "rounds/r001/decisions.parquet").to_pylist()
    }
    sft = pq.read_table(out / "rounds/r001/sft.parquet").to_pylist()
    tasks = {t["id"]: t for t in pq.read_table(out / "rounds/r001/tasks.parquet").to_pylist()}
    plain = [t for t in traces if '"hint"' not in t["decoding"]]
    hinted = [t for t in traces if '"hint"' in t["decoding"]]
    solved = {t["task_id"] for t in plain if judg[t["id"]]["verdict"]}
    # Exactly the tasks no plain sample solved are retried with a hint.
    assert {t["task_id"] for t in hinted} == set(tasks) - solved
    assert hinted, "this configuration leaves some tasks unsolved"
    # Hinted traces are judged against the gold answer they were shown.
    for t in hinted:
        assert judg[t["id"]]["verdict"] == (t["answer"] == tasks[t["task_id"]]["answer"])
    kept_hinted = [t for t in hinted if dec[t["id"]]["kept"]]
    assert kept_hinted, "some rationales reach the hinted answer"
    by_trace = {ex["trace_id"]: ex for ex in sft}
    for t in kept_hinted:
        ex = by_trace[t["id"]]
        assert ex["prompt"] == tasks[t["task_id"]]["prompt"] and HINT_MARK not in ex["prompt"]
        assert ex["completion"] == t["text"]
