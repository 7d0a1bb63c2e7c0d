"""Generation over a real local Ray cluster (2 CPU workers, no mocks) makes the same records as
one process; replicas generate with the driver's weights after a sync.

Ray starts once for the module (slow on 2 cores); the tests that need it are skipped, visibly,
when `ray` is not installed. Sharding and config checks run without it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ClusterConfig, ConfigError, ModelConfig, TrainConfig, load_config
from reasonloop.loop.cluster import RayRollouts, open_rollouts
from reasonloop.loop.run import RunMismatchError, _check_config
from reasonloop.loop.run import run as run_loop
from reasonloop.loop.store import RunDir
from reasonloop.models.base import Sampling
from reasonloop.models.rollouts import LocalRollouts, plan_shards, sample_shard
from reasonloop.models.tiny import TinyModel
from reasonloop.types import SFTExample

sys.path.insert(0, str(Path(__file__).parent))
from small_run import SMALL, nested  # noqa: E402

try:
    import ray
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(
    ray is None, reason="ray is not installed (`pip install reasonloop[ray]`)"
)

TINY = ModelConfig(dim=32, n_layers=2, n_heads=2, threads=1)
PROMPTS = [f"{a}+{b}=" for a, b in zip(range(3, 60, 3), range(90, 10, -4), strict=False)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _config(kind: str):
    # Small decode batches and shards, so every phase has several shards for two workers.
    over = {"rounds": 2, "seed": 3, "heldout_samples": 2}
    extra = {"reasoner.batch_size": 8, "cluster.shard_size": 8, "cluster.kind": kind}
    return load_config("easy-to-hard", None, over | nested(SMALL | extra))


def _same_run(a: Path, b: Path) -> None:
    assert pq.read_table(a / "heldout.parquet").equals(pq.read_table(b / "heldout.parquet"))
    for r in range(3):
        da, db = a / "rounds" / f"r{r:03d}", b / "rounds" / f"r{r:03d}"
        for name in ("tasks", "traces", "judgements", "decisions", "sft", "pairs"):
            ta, tb = pq.read_table(da / f"{name}.parquet"), pq.read_table(db / f"{name}.parquet")
            assert ta.equals(tb), f"round {r} {name}.parquet differs"
        ma = json.loads((da / "metrics.json").read_text())
        mb = json.loads((db / "metrics.json").read_text())
        assert ma["heldout"] == mb["heldout"], f"round {r} held-out metrics differ"
        wa = (a / "checkpoints" / f"r{r:03d}" / "model.safetensors").read_bytes()
        wb = (b / "checkpoints" / f"r{r:03d}" / "model.safetensors").read_bytes()
        assert wa == wb, f"round {r} checkpoint differs"


# ---------------------------------------------------------------------- without a cluster


def test_shards_are_whole_decode_batches_and_independent_of_order():
    model = TinyModel.create(TINY, seed=1)
    sampling = Sampling(temperature=1.0, max_new_tokens=6, seed=5)
    shards = plan_shards(len(PROMPTS), 2, sampling, batch_size=6, shard_size=4)
    # 6 rows / 2 samples = 3 prompts a decode batch; 4 rounds up to 6 prompts a shard.
    assert [(s.start, s.stop) for s in shards] == [(0, 6), (6, 12), (12, 18), (18, 19)]
    assert len({s.sampling.seed for s in shards}) == len(shards)
    whole = LocalRollouts(model, shard_size=4).generate(PROMPTS, 2, sampling, batch_size=6)
    # Each shard alone, last first (as workers might finish them), then put back in order.
    parts = {
        s.index: sample_shard(model, PROMPTS[s.start : s.stop], 2, s.sampling, 6)
        for s in reversed(shards)
    }
    assert whole == [c for i in sorted(parts) for c in parts[i]]
    assert len({c.text for cs in whole for c in cs}) > 5  # really sampled


def test_missing_ray_is_a_config_error_naming_the_field(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when not installed
    with pytest.raises(ConfigError, match=r"cluster\.kind.*pip install reasonloop\[ray\]"):
        open_rollouts(ClusterConfig(kind="ray"), TINY)
    assert isinstance(open_rollouts(ClusterConfig(), TINY), LocalRollouts)


def test_resume_may_change_where_generation_runs_but_not_the_shards(tmp_path):
    rd = RunDir(tmp_path)
    _check_config(rd, _config("local"))
    moved = ClusterConfig(kind="ray", address="auto", workers=5, shard_size=8)
    _check_config(rd, _config("ray").model_copy(update={"cluster": moved}))
    other = _config("local")
    other.cluster.shard_size = 16
    with pytest.raises(RunMismatchError, match="cluster.shard_size"):
        _check_config(rd, other)


# ---------------------------------------------------------------------------- with Ray


@needs_ray
def test_ray_run_makes_the_same_records_as_one_process(cluster, tmp_path):
    local = tmp_path / "local"
    run_loop(_config("local"), local, show_progress=False, log=lambda _: None)
    cfg = _config("ray")
    rollouts = open_rollouts(cfg.cluster, cfg.model)
    assert isinstance(rollouts, RayRollouts)
    try:
        summary = run_loop(
            cfg, tmp_path / "ray", show_progress=False, log=lambda _: None, rollouts=rollouts
        )
        stats = rollouts.stats()
    finally:
        rollouts.close()
    assert summary["complete"]
    _same_run(local, tmp_path / "ray")
    # The work ran in two actor processes, neither of them this one, both on the last weights.
    pids = {s["pid"] for s in stats}
    assert len(stats) == 2 and len(pids) == 2 and os.getpid() not in pids
    assert all(s["shards"] > 0 for s in stats), stats
    assert {s["version"] for s in stats} == {str(RunDir(tmp_path / "ray").checkpoint(2))}


@needs_ray
def test_replicas_generate_with_the_driver_weights_after_training(cluster):
    model = TinyModel.create(TINY, seed=0)
    rollouts = RayRollouts(ClusterConfig(kind="ray", workers=2, shard_size=4), TINY)
    sampling = Sampling(temperature=1.0, max_new_tokens=6, seed=7)
    try:
        rollouts.sync(model, "start")
        before = rollouts.generate(PROMPTS, 2, sampling, batch_size=8)
        assert before == LocalRollouts(model, 4).generate(PROMPTS, 2, sampling, batch_size=8)
        data = [SFTExample(prompt=p, completion="7#7\n") for p in PROMPTS]
        train_sft(model, data, TrainConfig(steps=6, lr=1e-2, warmup_steps=0, batch_size=8), 0)
        trained = LocalRollouts(model, 4).generate(PROMPTS, 2, sampling, batch_size=8)
        assert trained != before  # training changed what the driver model samples
        rollouts.sync(model, "trained")
        assert rollouts.generate(PROMPTS, 2, sampling, batch_size=8) == trained
        stats = rollouts.stats()
    finally:
        rollouts.close()
    assert [s["version"] for s in stats] == ["trained", "trained"]
    assert len({s["pid"] for s in stats}) == 2 and all(s["shards"] > 0 for s in stats)
