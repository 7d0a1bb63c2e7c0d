"""The machine's fp32 (and bf16) matmul peak: the yardstick for "share of peak" in the other
benchmarks.

python benchmarks/matmul_peak.py [threads]
"""

from __future__ import annotations

import platform
import sys
import time

import torch

from reasonloop.models.decode_kernels import cpuinfo_line


def cpu_name() -> str:
    """The CPU's model name: ratios between frameworks move with the machine (the project's
    machines have been AMD EPYC and Intel Xeon kinds), so every table names it."""
    line = cpuinfo_line("model name")
    return line.split(":", 1)[1].strip() if line else platform.processor() or "unknown CPU"


def matmul_peak_gflops(
    threads: int,
    size: int = 1536,
    reps: int = 5,
    rounds: int = 3,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Best GFLOP/s of a square `size` matmul in `dtype` over a few rounds, with `threads` torch
    threads.

    The best round, not the mean: the machine is shared, and the peak is what the hardware can
    do when nobody else is using it."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        c = torch.empty(size, size, dtype=dtype)
        torch.mm(a, b, out=c)
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=c)
            best = min(best, (time.perf_counter() - t) / reps)
        return 2 * size**3 / best / 1e9
    finally:
        torch.set_num_threads(old)


if __name__ == "__main__":
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    print(cpu_name())
    print(f"fp32 matmul peak, {threads} threads: {matmul_peak_gflops(threads):.1f} GFLOP/s")
    bf16 = matmul_peak_gflops(threads, dtype=torch.bfloat16)
    print(f"bf16 matmul peak, {threads} threads: {bf16:.1f} GFLOP/s")
