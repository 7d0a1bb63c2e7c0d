"""The round loop runs unchanged on the `hf` backend (a small Llama built from a config)."""

from __future__ import annotations

import json

from reasonloop.config import load_config
from reasonloop.loop.run import run


def test_rft_round_on_hf_backend(tmp_path):
    cfg = load_config(
        "rft",
        overrides={
            "rounds": 1,
            "model": {
                "backend": "hf",
                "threads": 1,
                "hf_config": {
                    "model_type": "llama",
                    "vocab_size": 128,
                    "hidden_size": 48,
                    "intermediate_size": 96,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 4,
                    "max_position_embeddings": 64,
                },
            },
            "seed_train": {"steps": 150, "batch_size": 32, "lr": 0.003},
            "train": {"steps": 5, "batch_size": 16},
            "tasks": {
                "seed_levels": [1],
                "seed_examples": 100,
                "heldout_levels": [1, 2],
                "heldout_per_level": 10,
            },
            "creator": {"per_round": 16},
            "reasoner": {"samples": 2, "batch_size": 32},
        },
    )
    out = tmp_path / "run"
    summary = run(cfg, out, show_progress=False, log=lambda *_: None)
    assert summary["complete"] and len(summary["rounds"]) == 2
    # The checkpoint is a transformers directory (safetensors), reloaded by the next round.
    assert (out / "checkpoints/r001/model.safetensors").exists()
    assert json.loads((out / "checkpoints/r001/config.json").read_text())["model_type"] == "llama"
    r0 = summary["rounds"][0]
    assert r0["train"]["loss_last"] < r0["train"]["loss_first"]
    assert summary["rounds"][1]["data"]["traces"] == 2 * summary["rounds"][1]["data"]["tasks"]
