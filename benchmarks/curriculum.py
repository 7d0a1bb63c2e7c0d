"""Adaptive curriculum against uniform task sampling: held-out pass@1 against training time,
same seed model, same time budget, several seeds.

    python benchmarks/curriculum.py [--seeds 0 1 2] [--budget 300] [--max-rounds 12] [--jobs 2]
                                    [--out runs/curriculum] [--set FIELD=VALUE ...]

Both arms run the `adaptive-curriculum` preset on the same testbed (`TESTBED`); they differ only in
how the Task Creator picks each round's levels:

- `adaptive`: the preset's Creator, at the level whose measured success lies in its target band
  with the highest p(1-p) (`tasks/curriculum.py`), moving up once everything measured is mastered;
- `uniform`: every round draws its tasks uniformly from all held-out levels.

Everything else (model, seed, Reasoner, verifier, training, evolution and dedup) is the same, and
round 0 (the supervised seed) is the same model in both arms of a seed. Each run gets the same
training-time budget (`methods.run_one`: rounds are added until the rounds after the seed have spent
`--budget` CPU seconds, held-out evaluation excluded). Prints each arm's pass@1 at the budget and, per
seed, the time adaptive took to reach uniform's pass@1 at the budget, as a share of that budget
(below 1: adaptive gets there sooner). Writes curriculum.json and curriculum.png into --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import at_budget, finish_plot, run_one  # noqa: E402

from reasonloop.cli import _set as set_field  # noqa: E402

PRESET = "adaptive-curriculum"

TESTBED: dict = {
    "model": {"max_seq_len": 96, "rope_theta": float("inf"), "threads": 1},
    "seed_train": {"steps": 1500},
    "tasks": {
        "family": "chain_sum",
        "options": {"steps": True},
        "seed_levels": [2, 3, 4],
        "heldout_levels": [2, 3, 4, 5, 6, 7, 8],
        "heldout_per_level": 100,
    },
    "creator": {"evolve": ["change_numbers", "add_term"], "dedup_threshold": None},
    "reasoner": {"max_new_tokens": 72},
    "postprocess": {"max_chars": 72},
    "strategy": {"rationalize": False},
}
"""Chained sums written step by step (`12+7+30=` -> `19,49`), seeded on 2-4 terms, held out on
2-8 terms; one thread per run (two runs share the machine's two cores).

Why not the preset's own addition testbed: there STaR rationalises every failure with the gold
answer, so a round learns from any level whatever its success rate and the Creator's choice of
level matters little. Here a round learns only from what the Reasoner solved, so a level where it
never succeeds teaches nothing, which is the premise of aiming at p(1-p). No position encoding
(rope_theta inf) lets a term count beyond the seed's be read at all; the evolution operators that
change the prompt's form (list form, rewording) are off, and so is dedup (a chained sum of few
terms has few distinct prompts)."""


def uniform(testbed: dict, levels: list[int]) -> dict:
    """The same testbed with a Creator that draws every round from all `levels` alike."""
    arm = copy.deepcopy(testbed)
    arm.setdefault("creator", {}).update(
        {
            "mode": "frontier",
            "start_level": min(levels),
            "levels_ahead": max(levels) - min(levels) + 1,
            "max_level": max(levels),
            "step": 0,
            "review_share": 0.0,
        }
    )
    return arm


def time_to_reach(curve: dict, target: float) -> float | None:
    """Training seconds at the first round whose pass@1 reaches `target` (None: never)."""
    for s, p in zip(curve["seconds"], curve["pass@1"], strict=True):
        if p >= target:
            return s
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budget", type=float, default=300.0, help="training CPU s after the seed")
    ap.add_argument("--max-rounds", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each uses one thread)")
    ap.add_argument("--out", default="runs/curriculum")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args()
    out = Path(args.out)
    testbed = copy.deepcopy(TESTBED)
    for dotted in args.set:
        set_field(testbed, dotted)
    from reasonloop.config import load_config

    levels = load_config(PRESET, overrides=testbed).tasks.heldout_levels
    arms = {"adaptive": testbed, "uniform": uniform(testbed, levels)}
    curves: dict[str, dict[int, dict]] = {name: {} for name in arms}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            (name, seed): pool.submit(
                run_one, PRESET, seed, args.budget, args.max_rounds, out, over, name
            )
            for seed in args.seeds
            for name, over in arms.items()
        }
        for (name, seed), f in futures.items():
            c = curves[name][seed] = f.result()
            print(
                f"{name} seed {seed}: "
                + " ".join(
                    f"{p:.1%}@{s:.0f}s" for p, s in zip(c["pass@1"], c["seconds"], strict=True)
                ),
                flush=True,
            )
    print(
        f"\n{PRESET}, held-out levels {levels}, {len(args.seeds)} seeds, training budget "
        f"{args.budget:.0f} s after the seed\n"
    )
    print(
        "| seed | round 0 | adaptive at budget | uniform at budget | adaptive's time to uniform's final |"
    )
    print("|---|---|---|---|---|")
    rows = []
    for seed in args.seeds:
        a, u = curves["adaptive"][seed], curves["uniform"][seed]
        fa, fu = at_budget(a, args.budget), at_budget(u, args.budget)
        reach = time_to_reach(a, fu)
        share = None if reach is None else reach / max(u["seconds"][-1], 1e-9)
        rows.append({"seed": seed, "adaptive": fa, "uniform": fu, "time_share": share})
        print(
            f"| {seed} | {a['pass@1'][0]:.1%} | {fa:.1%} | {fu:.1%} | "
            + ("never" if share is None else f"{reach:.0f} s = {share:.2f} of uniform's")
            + " |"
        )
    fa = [r["adaptive"] for r in rows]
    fu = [r["uniform"] for r in rows]
    shares = [r["time_share"] for r in rows if r["time_share"] is not None]
    print(
        f"| mean | | {statistics.mean(fa):.1%} | {statistics.mean(fu):.1%} | "
        + (
            f"{statistics.mean(shares):.2f} ({len(shares)} of {len(rows)} seeds reach it)"
            if shares
            else "never"
        )
        + " |"
    )
    print(
        f"\nadaptive above uniform in {sum(x > y for x, y in zip(fa, fu, strict=True))} of {len(rows)} seeds"
    )
    (out / "curriculum.json").write_text(
        json.dumps(
            {"testbed": testbed, "budget": args.budget, "rows": rows, "curves": curves}, indent=2
        )
        + "\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, color in (("adaptive", "C0"), ("uniform", "C1")):
        for i, c in enumerate(curves[name].values()):
            ax.plot(
                c["seconds"],
                [100 * p for p in c["pass@1"]],
                marker="o",
                color=color,
                alpha=0.8,
                label=name if i == 0 else None,
            )
    title = f"{PRESET}: adaptive vs uniform levels, {len(args.seeds)} seed(s)"
    finish_plot(fig, ax, args.budget, title, out / "curriculum.png")
    print(f"\n{out / 'curriculum.json'}, {out / 'curriculum.png'}")


if __name__ == "__main__":
    main()
