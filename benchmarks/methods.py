"""Training methods side by side: held-out pass@1 per round for each preset, several seeds.

    python benchmarks/methods.py [--presets star rft rest-em iterative-dpo step-dpo grpo-zero rloo ppo]
                                 [--seeds 0 1 2] [--rounds 4] [--out runs/methods]

Every preset runs on the same family, seed recipe and held-out set (the common overrides below),
so round 0 (the supervised seed) is the same model for all of them within a seed; what differs
is how each round learns. Prints a table (mean over seeds, with min-max spread) and writes
methods.png and methods.json into --out. Runs resume: the same command again only runs what is
missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from reasonloop.config import load_config
from reasonloop.loop.run import run

COMMON = {
    "model": {"dim": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 64, "rope_theta": 10000.0},
    "seed_train": {"lr": 0.002, "steps": 1500, "batch_size": 64, "warmup_steps": 50},
    "tasks": {
        "family": "addition",
        "seed_levels": [1, 2, 3],
        "seed_examples": 20000,
        "heldout_levels": [1, 2, 3, 4],
        "heldout_per_level": 100,
    },
    "creator": {"per_round": 600, "start_level": 2, "levels_ahead": 2, "mastery": 0.9, "step": 1},
    "reasoner": {"samples": 8, "temperature": 1.0},
    "evaluator": {"kind": "gold"},
}
"""The shared testbed: a deliberately short seed (1500 steps) leaves 2-3 digit addition partly
learned, so every method has room to improve on levels it can already sometimes solve. Each
preset keeps its own answer format and token budget (step-dpo writes one step per column)."""


def run_one(preset: str, seed: int, rounds: int, out: Path) -> dict:
    cfg = load_config(preset, overrides={**COMMON, "rounds": rounds, "seed": seed})
    t0 = time.perf_counter()
    summary = run(cfg, out / f"{preset}-s{seed}", show_progress=False, log=lambda *_: None)
    summary["wall_seconds"] = time.perf_counter() - t0
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--presets",
        nargs="+",
        default=["star", "rft", "rest-em", "iterative-dpo", "step-dpo", "grpo-zero", "rloo", "ppo"],
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default="runs/methods")
    args = ap.parse_args()
    out = Path(args.out)
    results: dict[str, dict[int, list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    for preset in args.presets:
        for seed in args.seeds:
            s = run_one(preset, seed, args.rounds, out)
            results.setdefault(preset, {})[seed] = [r["heldout"]["pass@1"] for r in s["rounds"]]
            seconds.setdefault(preset, []).append(s["seconds"])
            print(
                f"{preset} seed {seed}: " + " ".join(f"{x:.1%}" for x in results[preset][seed]),
                flush=True,
            )
    header = (
        "| preset | "
        + " | ".join(f"r{r}" for r in range(args.rounds + 1))
        + " | last - r0 | s/run |"
    )
    print("\n" + header)
    print("|" + "---|" * (args.rounds + 4))
    table = {}
    for preset, by_seed in results.items():
        curves = list(by_seed.values())
        cells, means = [], []
        for r in range(args.rounds + 1):
            xs = [c[r] for c in curves]
            means.append(statistics.mean(xs))
            cells.append(f"{means[-1]:.1%} ({min(xs):.0%}-{max(xs):.0%})")
        gains = [c[-1] - c[0] for c in curves]
        table[preset] = {"mean": means, "gains": gains, "curves": curves}
        print(
            f"| {preset} | "
            + " | ".join(cells)
            + f" | {statistics.mean(gains) * 100:+.1f} pts ({min(gains) * 100:+.0f}..{max(gains) * 100:+.0f})"
            + f" | {statistics.mean(seconds[preset]):.0f} |"
        )
    (out / "methods.json").write_text(json.dumps(table, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for preset, row in table.items():
        ax.plot(range(args.rounds + 1), [m * 100 for m in row["mean"]], marker="o", label=preset)
    ax.set_xticks(range(args.rounds + 1))
    ax.set_xlabel("round (0 = supervised seed)")
    ax.set_ylabel("held-out pass@1 (%)")
    ax.set_title(f"methods on the same seed, mean of {len(args.seeds)} seed(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "methods.png", dpi=110)
    print(f"\n{out / 'methods.json'}, {out / 'methods.png'}")


if __name__ == "__main__":
    main()
