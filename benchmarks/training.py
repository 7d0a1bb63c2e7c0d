"""SFT training speed: tokens/s of `train_sft` and its share of the machine's fp32 matmul peak.

    python benchmarks/training.py [--threads 2] [--steps 30] [--batch 64] [--reps 2]

FLOPs are counted as 6 x (parameters outside the embedding) per real (unpadded) token, the usual
forward + backward estimate, against the best square-matmul rate of `matmul_peak.py`. The same
loop on the same weights is timed with the tiny backend's torch ops in place of its fused
training kernels (`models/train_kernels.py`), and through the hf backend
(`transformers.LlamaForCausalLM`) when that backend is importable. Best of `reps` runs: the
machine is shared.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import cpu_name, matmul_peak_gflops  # noqa: E402

from reasonloop.algorithms.sft import train_sft  # noqa: E402
from reasonloop.config import ModelConfig, TrainConfig  # noqa: E402
from reasonloop.models import train_kernels  # noqa: E402
from reasonloop.models.tiny import TinyModel  # noqa: E402
from reasonloop.types import SFTExample  # noqa: E402


def make_examples(n: int, seed: int = 0) -> list[SFTExample]:
    """Addition with digit steps, like the compact task formats: 20..70 tokens each."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 10**6), rng.randint(10, 10**6)
        steps = [f"{x}+{y}" for x, y in zip(str(a)[::-1], str(b)[::-1], strict=False)]
        out.append(SFTExample(f"{a}+{b}=", ";".join(steps) + f"#{a + b}"))
    return out


def best_runs(makers: dict, examples: list[SFTExample], cfg: TrainConfig, reps: int) -> dict:
    """Fastest of `reps` runs of each backend, interleaved so noise hits all alike. A maker is a
    model factory, or (factory, context) to train inside that context."""
    best: dict = {}
    for r in range(reps):
        for name, maker in makers.items():
            make_model, context = maker if isinstance(maker, tuple) else (maker, nullcontext)
            with context():
                stats = train_sft(make_model(), examples, cfg, seed=r)
            if name not in best or stats["tokens_per_s"] > best[name]["tokens_per_s"]:
                best[name] = stats
    return best


def bench(model_cfg: ModelConfig, args: argparse.Namespace, peak: float) -> None:
    examples = make_examples(args.batch * args.steps)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=5)
    base = TinyModel.create(model_cfg, seed=0)
    n_params = sum(p.numel() for p in base.module.parameters()) - base.module.embed.weight.numel()
    makers: dict = {"tiny": base.copy, "tiny, torch ops": (base.copy, train_kernels.disabled)}
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from reasonloop.models.hf import HFModel

            base.export_hf(d)
            makers["hf backend"] = lambda: HFModel.load(d)
        except ImportError as e:
            print(f"(hf backend skipped: {e})")
        rows = list(best_runs(makers, examples, cfg, args.reps).items())
    lengths = [len(e.prompt) + len(e.completion) + 1 for e in examples]
    print(
        f"\nmodel dim {model_cfg.dim}, {model_cfg.n_layers} layers: {n_params / 1e6:.2f}M params "
        f"(+ embedding); batch {args.batch}, {args.steps} steps, {min(lengths)}..{max(lengths)} tokens a sequence"
    )
    print(
        f"{'backend':<16}{'tokens/s':>10}{'GFLOP/s':>10}{'% peak':>8}{'loss first':>12}{'loss last':>11}"
    )
    for name, s in rows:
        gflops = 6 * n_params * s["tokens_per_s"] / 1e9
        print(
            f"{name:<16}{s['tokens_per_s']:>10.0f}{gflops:>10.1f}{100 * gflops / peak:>7.1f}%"
            f"{s['loss_first']:>12.3f}{s['loss_last']:>11.3f}"
        )
    speed = {name: s["tokens_per_s"] for name, s in rows}
    print(f"tiny / tiny with torch ops: {speed['tiny'] / speed['tiny, torch ops']:.2f}x")
    if "hf backend" in speed:
        print(f"tiny / hf backend: {speed['tiny'] / speed['hf backend']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.threads)
    print(
        f"{cpu_name()}; torch threads {args.threads}; fp32 matmul peak {peak:.1f} GFLOP/s "
        "(shared machine: noisy)"
    )
    for model_cfg in (ModelConfig(dim=256, n_layers=4, n_heads=4), ModelConfig()):
        bench(model_cfg, args, peak)


if __name__ == "__main__":
    main()
