"""Rollout throughput of the solve phase: in this process vs 1 and 2 Ray workers.

    python benchmarks/scale.py [--tasks 512] [--reps 3] [--checkpoint RUN/checkpoints/r000]

The solve phase's sampling (`reasoner.solve`: one greedy and k-1 sampled completions per
task) runs on the same weights, prompts and seed through `LocalRollouts` (with 1 torch thread,
the baseline, and with one thread per core) and through `RayRollouts` with 1 and with one
worker per core, each worker single-threaded. Every mode must produce exactly the baseline's
traces (the fixed shards make them independent of where they ran); the script stops if one
does not. Tokens/s counts generated tokens (each completion up to its stop), completions/s the
traces; each figure is the median of `reps` timed calls after a warm-up, the modes interleaved
so that the shared machine's noise hits them all alike, and the load average is printed with
them. CPU seconds per call (driver plus workers, from /proc: Linux) say what the work costs
whatever share of the cores the machine's other jobs leave. The Ray replicas sit in one local cluster started once (its start and each mode's first
weight sync are reported apart: they are paid once a run and once a round, not per call).

The model is the easy-to-hard preset's, random-initialised from seed 0 unless `--checkpoint`
gives trained weights of that architecture; random weights rarely stop early, so every
completion runs close to `--max-new-tokens`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reasonloop.config import ClusterConfig, ModelConfig, ReasonerConfig, load_config  # noqa: E402
from reasonloop.loop.cluster import RayRollouts  # noqa: E402
from reasonloop.models import build_model, load_model  # noqa: E402
from reasonloop.models.base import LanguageModel  # noqa: E402
from reasonloop.models.rollouts import LocalRollouts, Rollouts  # noqa: E402
from reasonloop.reasoner.solve import solve  # noqa: E402
from reasonloop.tasks.registry import get_family  # noqa: E402
from reasonloop.types import Task, Trace  # noqa: E402


def make_tasks(n: int, levels: list[int], seed: int = 0) -> list[Task]:
    family = get_family("addition")
    rng = random.Random(seed)
    return [family.make(rng, levels[i % len(levels)]) for i in range(n)]


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU time used so far by these processes (all their threads), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def timed(fn: Callable[[], list[Trace]], pids: set[int]) -> tuple[float, float, list[Trace]]:
    """Wall seconds, CPU seconds of `pids` and result of `fn()`."""
    c, t = cpu_seconds(pids), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, cpu_seconds(pids) - c, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=512)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--samples", type=int, default=5, help="completions per task (first greedy)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=256, help="reasoner.batch_size")
    p.add_argument("--shard-size", type=int, default=128, help="cluster.shard_size")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--checkpoint", type=Path, default=None)
    args = p.parse_args()

    import ray

    base = load_config("easy-to-hard", None, {}).model
    reasoner = ReasonerConfig(
        samples=args.samples,
        temperature=0.7,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    tasks = make_tasks(args.tasks, args.levels)
    family = get_family("addition")

    def model_config(threads: int) -> ModelConfig:
        return base.model_copy(update={"threads": threads})

    model: LanguageModel = (
        load_model(model_config(1), args.checkpoint)
        if args.checkpoint
        else build_model(model_config(1), seed=0)
    )
    c = args.cores
    t = time.perf_counter()
    load_before = os.getloadavg()[0]
    # One cluster for every Ray mode, so that they can be interleaved; its logical CPUs cover
    # all replicas at once, but only the mode being timed runs: the others' actors sit idle.
    ray.init(num_cpus=1 + c, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t

    def ray_mode(workers: int) -> Rollouts:
        cluster = ClusterConfig(kind="ray", workers=workers, shard_size=args.shard_size)
        return RayRollouts(cluster, model_config(1))

    base_name = "local, 1 thread"
    modes: dict[str, tuple[int, Rollouts]] = {  # name -> (driver torch threads, rollouts)
        base_name: (1, LocalRollouts(shard_size=args.shard_size)),
        f"local, {c} threads": (c, LocalRollouts(shard_size=args.shard_size)),
        "ray, 1 worker": (1, ray_mode(1)),
        f"ray, {c} workers": (1, ray_mode(c)),
    }
    sync_s = {}
    for name, (_, gen) in modes.items():
        t = time.perf_counter()
        gen.sync(model, "bench")
        sync_s[name] = time.perf_counter() - t

    # The driver's CPU counts too: it plans the shards and receives the completions.
    pids = {
        name: {os.getpid()} | {w["pid"] for w in gen.stats()} for name, (_, gen) in modes.items()
    }

    def call(name: str) -> tuple[float, float, list[Trace]]:
        threads, gen = modes[name]
        torch.set_num_threads(threads)
        return timed(lambda: solve(gen, family, tasks, reasoner, 7, "bench", 1), pids[name])

    times: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    reference: list[Trace] | None = None
    try:
        for rep in range(args.reps + 1):  # rep 0 warms up every process
            for name in modes:
                seconds, cpu_s, traces = call(name)
                if reference is None:
                    reference = traces
                elif traces != reference:
                    bad = sum(a != b for a, b in zip(traces, reference, strict=True))
                    sys.exit(f"{name}: {bad} of {len(traces)} traces differ from local's")
                if rep:
                    times[name].append(seconds)
                    cpu[name].append(cpu_s)
        stats = {name: gen.stats() for name, (_, gen) in modes.items()}
    finally:
        for _, gen in modes.values():
            gen.close()
        ray.shutdown()

    assert reference is not None
    load_after = os.getloadavg()[0]
    tokens = sum(tr.n_tokens for tr in reference)
    print(
        f"model: easy-to-hard preset's tiny model (dim {base.dim}, {base.n_layers} layers), "
        f"{'weights ' + str(args.checkpoint) if args.checkpoint else 'random init'}; "
        f"{args.tasks} addition tasks (levels {args.levels}) x {args.samples} samples "
        f"(1 greedy), up to {args.max_new_tokens} new tokens; batch {args.batch_size}, "
        f"shard {args.shard_size} prompts; {c} cores; median of {args.reps}"
    )
    print(
        f"{len(reference)} completions, {tokens} tokens per call, identical in every mode; "
        f"Ray cluster start {ray_start:.1f} s; load average {load_before:.1f} before, "
        f"{load_after:.1f} after"
    )
    base_s = statistics.median(times[base_name])
    header = (
        f"{'mode':<28}{'tokens/s':>10}{'compl/s':>9}{'vs local':>9}"
        f"{'seconds':>9}{'CPU s':>7}{'first sync s':>13}{'shards/worker':>15}"
    )
    print(header)
    print("-" * len(header))
    for name, ts in times.items():
        s = statistics.median(ts)
        shards = "/".join(str(w["shards"] // (args.reps + 1)) for w in stats[name])
        print(
            f"{name:<28}{tokens / s:>10,.0f}{len(reference) / s:>9,.0f}{base_s / s:>8.2f}x"
            f"{s:>9.2f}{statistics.median(cpu[name]):>7.2f}{sync_s[name]:>13.2f}{shards:>15}"
        )
    print(
        f"(vs local: speed relative to '{base_name}'; CPU s: CPU time of the driver and the "
        "workers per call, Ray's own daemons left out; shards per call, per worker)"
    )


if __name__ == "__main__":
    main()
