"""Generation spread over Ray actors, each holding a model replica (`cluster.kind: ray`).

The loop sees `Rollouts` (`models/rollouts.py`): `sync(model, version)` after each training
phase, `generate(prompts, n, sampling, batch_size)` in the solve and eval phases. Here each shard
of a `generate` call goes to the next idle replica, which runs the very function the local mode
runs (`sample_shard`) on the shard's prompts and seed; the completions come back and are put
in shard order, so solve and eval build the same Trace records as in one process.

Weights travel through Ray's object store, not a shared filesystem: `sync` saves the model
(`model.save`, safetensors and config) into a temporary directory, puts the files' bytes in the
object store once, and every replica writes them to its own temporary directory and loads them
with `load_model`. The same path serves a local cluster and a remote one (`cluster.address`),
and every backend that saves and loads (tiny, hf).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from reasonloop.config import ClusterConfig, ConfigError, ModelConfig
from reasonloop.models.base import Completion, LanguageModel, Sampling
from reasonloop.models.rollouts import LocalRollouts, Progress, Rollouts, plan_shards, sample_shard


def open_rollouts(cluster: ClusterConfig, model: ModelConfig) -> Rollouts:
    """Rollouts for `cluster.kind`. Nothing starts yet (a resumed, finished run needs no
    cluster); a missing `ray` package is reported now, before the run directory is touched."""
    if cluster.kind == "local":
        return LocalRollouts(shard_size=cluster.shard_size)
    return RayRollouts(cluster, model)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "cluster.kind is 'ray' but the `ray` package is not installed: "
            "`pip install reasonloop[ray]` (or `pip install 'ray>=2.9'`), or set cluster.kind: local"
        ) from None
    return ray


class Replica:
    """A model replica inside a Ray actor (wrapped by `ray.remote` when the cluster starts)."""

    def __init__(self, model: dict[str, Any], threads: int) -> None:
        import torch

        # Ray sets OMP_NUM_THREADS from the actor's CPUs; torch's own count is set to match the
        # driver's `model.threads` when there is one.
        torch.set_num_threads(threads)
        self.config = ModelConfig.model_validate(model)
        self.model: LanguageModel | None = None
        self.version = ""
        self.shards = 0
        self.prompts = 0

    def load(self, files: dict[str, bytes], version: str) -> int:
        """Load weights saved by `model.save` (file name -> bytes); returns this process's id."""
        from reasonloop.models import load_model

        with tempfile.TemporaryDirectory(prefix="reasonloop-replica-") as tmp:
            for name, data in files.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            self.model = load_model(self.config, tmp)
        self.version = version
        return os.getpid()

    def generate(
        self, prompts: list[str], n: int, sampling: Sampling, batch_size: int
    ) -> list[list[Completion]]:
        if self.model is None:
            raise RuntimeError("replica has no weights: sync(model, version) first")
        out = sample_shard(self.model, prompts, n, sampling, batch_size)
        self.shards += 1
        self.prompts += len(prompts)
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "shards": self.shards,
            "prompts": self.prompts,
            "version": self.version,
        }


class RayRollouts:
    """`cluster.workers` replicas on a Ray cluster: joined at `cluster.address`, an already
    initialised one (left running on `close`), or a local one started here (shut down on
    `close`). Started on the first `sync`."""

    def __init__(self, cluster: ClusterConfig, model: ModelConfig) -> None:
        self.ray = _import_ray()
        self.cluster, self.model_config = cluster, model
        self.shard_size = cluster.shard_size
        self.version: str | None = None
        self._actors: list[Any] = []
        self._started_ray = False

    def _start(self) -> None:
        ray, c = self.ray, self.cluster
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"runtime_env": c.runtime_env} if c.runtime_env else {}
            if c.address is not None:
                ray.init(address=c.address, **kwargs)
            else:
                cpus = math.ceil(c.workers * c.cpus_per_worker)
                gpus = math.ceil(c.workers * c.gpus_per_worker)
                ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, **kwargs)
            self._started_ray = True
        threads = self.model_config.threads or max(1, int(c.cpus_per_worker))
        actor = ray.remote(Replica).options(num_cpus=c.cpus_per_worker, num_gpus=c.gpus_per_worker)
        spec = self.model_config.model_dump(mode="json")
        self._actors = [actor.remote(spec, threads) for _ in range(c.workers)]

    def sync(self, model: LanguageModel, version: str) -> None:
        if version == self.version:
            return
        if not self._actors:
            self._start()
        with tempfile.TemporaryDirectory(prefix="reasonloop-sync-") as tmp:
            root = Path(tmp) / "weights"
            model.save(root)
            files = {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file()
            }
        # One copy in the object store, read by every replica (zero-copy on the same node).
        ref = self.ray.put(files)
        self.ray.get([a.load.remote(ref, version) for a in self._actors])
        self.version = version

    def generate(
        self,
        prompts: list[str],
        n: int,
        sampling: Sampling,
        batch_size: int,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        if self.version is None:
            raise RuntimeError("RayRollouts.generate before sync(model, version)")
        ray = self.ray
        todo = plan_shards(len(prompts), n, sampling, batch_size, self.shard_size)
        todo.reverse()  # popped from the end: shard 0 first
        results: list[list[list[Completion]]] = [[] for _ in todo]
        idle = list(self._actors)
        running: dict[Any, tuple[Any, int, int]] = {}  # ref -> (actor, shard index, prompts)
        while todo or running:
            # Each idle replica takes the next shard: replicas that finish early take more.
            while idle and todo:
                s, actor = todo.pop(), idle.pop(0)
                ref = actor.generate.remote(prompts[s.start : s.stop], n, s.sampling, batch_size)
                running[ref] = (actor, s.index, s.stop - s.start)
            done, _ = ray.wait(list(running), num_returns=1)
            actor, index, count = running.pop(done[0])
            results[index] = ray.get(done[0])
            idle.append(actor)
            if progress:
                progress(count, sum(c.n_tokens for cs in results[index] for c in cs))
        return [comps for shard in results for comps in shard]

    def stats(self) -> list[dict[str, Any]]:
        return self.ray.get([a.stats.remote() for a in self._actors])

    def close(self) -> None:
        for a in self._actors:
            self.ray.kill(a)
        self._actors, self.version = [], None
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False
