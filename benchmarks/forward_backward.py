"""Label-free judges side by side: the majority vote against forward-backward consistency (FOBAR).

    python benchmarks/forward_backward.py [--seeds 0] [--rounds 2] [--out runs/forward-backward]
                                          [--threads N]

Linear equations, the tiny model seeded on gold levels 1-3 (one equation a side), then
label-free easy-to-hard rounds on levels 3-4 (level 4 puts x on both sides): each round the
Reasoner samples 5 solutions per task, the judge keeps the labels it trusts and the model trains
on the union of its own labels. Both judges start from the same seed round (the first judge's
round 0 is copied), so what differs is only which labels each keeps. Per round: labels kept, their
precision against gold (gold only measures), the backward checks asked, the solve+judge phase's
seconds and held-out pass@1 beyond the seed. Runs resume: the same command again only runs what
is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from reasonloop.config import load_config
from reasonloop.loop.run import run

JUDGES = ("consensus", "forward-backward")
COMMON = {
    "model": {
        "dim": 128,
        "n_layers": 4,
        "n_heads": 4,
        "max_seq_len": 64,
        "rope_theta": 10000.0,
        "abacus": 0,
        "abacus_offset": 0,
        "abacus_anchor": "",
    },
    "seed_train": {"lr": 0.002, "steps": 2000, "batch_size": 64, "warmup_steps": 50},
    "train": {"lr": 0.001, "steps": 300, "batch_size": 64, "warmup_steps": 20},
    "tasks": {
        "family": "linear_equation",
        "options": {},
        "seed_levels": [1, 2, 3],
        "seed_examples": 10000,
        "seed_check": 0,
        "seed_restarts": 0,
        "heldout_levels": [1, 2, 3, 4, 5],
        "heldout_per_level": 100,
    },
    "creator": {"per_round": 600, "start_level": 3, "levels_ahead": 2, "mastery": 0.5, "step": 1},
    "reasoner": {"samples": 5, "temperature": 0.7, "max_new_tokens": 24},
    "postprocess": {"max_chars": 40},
    "evaluator": {"min_vote_share": 0.6},
}


def config(judge: str, seed: int, rounds: int, threads: int):
    over = json.loads(json.dumps(COMMON)) | {"rounds": rounds, "seed": seed}
    over["evaluator"]["kind"] = judge
    over["model"]["threads"] = threads
    return load_config("easy-to-hard", overrides=over)


def seed_from(src: Path, dst: Path) -> None:
    """Start `dst` from `src`'s finished round 0 (records, checkpoint, manifest entry)."""
    if (dst / "manifest.json").exists():
        return
    dst.mkdir(parents=True)
    shutil.copy(src / "heldout.parquet", dst / "heldout.parquet")
    shutil.copytree(src / "rounds" / "r000", dst / "rounds" / "r000")
    shutil.copytree(src / "checkpoints" / "r000", dst / "checkpoints" / "r000")
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["rounds"] = {"0": manifest["rounds"]["0"]}
    (dst / "manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="runs/forward-backward")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        first = out / f"{JUDGES[0]}-s{seed}"
        for judge in JUDGES:
            d = out / f"{judge}-s{seed}"
            if judge != JUDGES[0]:
                seed_from(first, d)
            summary = run(
                config(judge, seed, args.rounds, args.threads), d, show_progress=False, log=print
            )
            manifest = json.loads((d / "manifest.json").read_text())
            for m in summary["rounds"][1:]:
                ph = manifest["rounds"][str(m["round"])]["phases"]
                fb = ph["solve"].get("forward_backward", {})
                rows.append(
                    {
                        "judge": judge,
                        "seed": seed,
                        "round": m["round"],
                        "level": ph["propose"]["frontier"],
                        "kept": ph["process"]["kept"],
                        "precision": ph["process"]["label_accuracy"],
                        "questions": fb.get("questions", 0),
                        "backward_hit_rate": fb.get("backward_hit_rate"),
                        "flipped": fb.get("tasks_flipped", 0),
                        "solve_seconds": ph["solve"]["seconds"],
                        "beyond_seed": m["heldout"]["beyond_seed"],
                        "seed_beyond": summary["rounds"][0]["heldout"]["beyond_seed"],
                    }
                )
    print(
        "\n| judge | seed | round | level | kept | precision | backward questions | "
        "backward hits | tasks flipped | solve+judge s | beyond seed (r0 -> r) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        hits = "-" if r["backward_hit_rate"] is None else f"{r['backward_hit_rate']:.2f}"
        prec = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        print(
            f"| {r['judge']} | {r['seed']} | {r['round']} | {r['level']} | {r['kept']} | {prec} | "
            f"{r['questions']} | {hits} | {r['flipped']} | {r['solve_seconds']:.0f} | "
            f"{r['seed_beyond']:.1%} -> {r['beyond_seed']:.1%} |"
        )
    for judge in JUDGES:
        last = [r for r in rows if r["judge"] == judge and r["round"] == args.rounds]
        if last:
            gain = [r["beyond_seed"] - r["seed_beyond"] for r in last]
            print(f"{judge}: beyond-seed gain {statistics.mean(gain) * 100:+.1f} points (mean)")
    (out / "forward_backward.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{out / 'forward_backward.json'}")


if __name__ == "__main__":
    main()
