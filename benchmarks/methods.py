"""Training methods side by side: held-out pass@1 against training time, same seed model, same
time budget, several seeds.

    python benchmarks/methods.py [--presets star rft rest-em iterative-dpo step-dpo grpo-zero rloo ppo
                                            seed-replay]
                                 [--seeds 0 1 2] [--budget 150] [--max-rounds 30] [--jobs 2]
                                 [--testbed addition|sum_above|sum_above_few] [--out runs/methods]

Every preset runs on the same testbed (`COMMON` below), so round 0, the supervised seed, is the
same model for all of them within a seed (star's seed also holds its hinted copies and step-dpo
writes one step per column, so those two train their own seed on the same tasks). What differs is
how each round learns. Each run gets the same budget of training time: rounds are added one at a
time until the rounds after the seed have spent `--budget` CPU seconds (their own
`cpu_seconds.total` minus `cpu_seconds.eval`, the held-out measurement; one thread per run, so
on a machine to itself CPU and wall seconds agree, and on a busy one the budget still measures
the work) or `--max-rounds` is reached, so a cheap method gets more rounds than an expensive
one. Runs resume: the same command again only runs what is
missing, and a larger budget extends them.

Prints, per preset, held-out pass@1 at round 0 and at exactly the budget (mean over seeds and
each seed's gain; `at_budget` reads each curve linearly between the rounds either side of it),
and writes methods.json (every run's curve: seconds and pass@1 per round) and methods.png
(pass@1 against training seconds, mean over seeds) into --out. A preset counts as
improving when its gain is positive in every seed. `seed-replay` is the baseline row
(`BASELINES`): the rounds' training time spent on the seed's own examples.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from reasonloop.cli import _set as set_field
from reasonloop.config import load_config
from reasonloop.loop.run import run

PRESETS = [
    "star",
    "rft",
    "rest-em",
    "iterative-dpo",
    "step-dpo",
    "grpo-zero",
    "rloo",
    "ppo",
    "seed-replay",
]

BASELINES: dict[str, tuple[str, list[str]]] = {"seed-replay": ("rft", ["creator.per_round=1"])}
"""Rows that are not a method but what a method must beat, as (preset, changes). `seed-replay`:
rft with one task a round, so each round trains its steps on the 500 seed examples it replays and
on next to nothing of its own: what the same training time gives a short seed without the
loop's data. Where a method ends near it, its gain is the seed training on, not the loop."""

COMMON = {
    "model": {
        "dim": 128,
        "n_layers": 4,
        "n_heads": 4,
        "max_seq_len": 64,
        "rope_theta": 10000.0,
        "threads": 1,
    },
    "seed_train": {"lr": 0.002, "steps": 1000, "batch_size": 64, "warmup_steps": 50},
    "tasks": {
        "family": "addition",
        "seed_levels": [1, 2, 3],
        "seed_examples": 20000,
        "heldout_levels": [2, 3],
        "heldout_per_level": 200,
    },
    "creator": {"per_round": 600, "start_level": 2, "levels_ahead": 2, "step": 0},
    "reasoner": {"samples": 8, "temperature": 1.0},
    "evaluator": {"kind": "gold"},
}
"""The shared testbed: a deliberately short seed (1000 steps on 1-3 digit addition) leaves 3-digit
sums partly learned; every round draws fresh 2-3 digit tasks (never the held-out ones) and the
held-out set is 200 tasks of each of those levels, so each method can improve where the seed is
weak, from its own samples and the gold verifier. Each preset keeps its own learning rate, steps,
answer format and token budget."""

SUM_ABOVE = [
    "tasks.family=sum_above",
    "tasks.seed_levels=[2,3,4,5,6]",
    "tasks.heldout_levels=[5,6]",
    "creator.start_level=5",
    "model.max_seq_len=80",
    "seed_train.steps=750",
    "reasoner.max_new_tokens=56",
    "postprocess.max_chars=56",
]

TESTBEDS: dict[str, list[str]] = {
    "addition": [],
    "sum_above": SUM_ABOVE,
    # Later changes win: the same testbed with a smaller, longer-trained seed.
    "sum_above_few": [*SUM_ABOVE, "tasks.seed_examples=500", "seed_train.steps=1000"],
}
"""Changes to `COMMON` (`--set` syntax) for each `--testbed`. `addition`: the testbed above.
`sum_above`: yes/no questions on chained sums of 5-6 one-digit terms
(`tasks/families/sum_above.py`), where a trace with a wrong step can still state the right
answer, so the gold verifier keeps lucky guesses. 750 seed steps leave held-out pass@1 near 60%
and 62% of round 1's right answers (seed 0) with a wrong step; seeds are sharp here (500 steps:
45%, 850: 89%, 1000: 99%). Every preset writes the steps there (a bare `y` or `n` is a coin
toss), so its token and character limits are raised to the longest solution's.
`sum_above_few`: the same questions with few worked solutions, the STaR setting (many questions
with answers, few written solutions): the seed trains 1000 steps on 500 examples, about 128
passes, so held-out pass@1 starts at 70-90% (seeds 0-4) and training on the same 500 examples
again adds little (`seed-replay`: +2 to +7 points in 150 s, against rft's +7 to +17); what a
method gains here comes from its own traces."""


def with_changes(base: dict, changes: Sequence[str]) -> dict:
    """A copy of `base` with `changes` (`--set` syntax) applied in order."""
    out = copy.deepcopy(base)
    for dotted in changes:
        set_field(out, dotted)
    return out


def row_preset(name: str, common: dict) -> tuple[str, dict]:
    """The preset and the config changes of a `--presets` entry: a preset on the testbed, or a
    baseline (`BASELINES`) with its own changes on top."""
    if name not in BASELINES:
        return name, common
    preset, changes = BASELINES[name]
    return preset, with_changes(common, changes)


def training_seconds(summary: dict) -> list[float]:
    """Cumulative training time after each round, in CPU seconds (the work done, however busy
    the machine was): round 0 counts 0 (the shared seed); a later round adds its total minus its
    held-out evaluation."""
    out, total = [], 0.0
    for r in summary["rounds"]:
        if r["round"] > 0:
            s = r["cpu_seconds"]
            total += s["total"] - s["eval"]
        out.append(total)
    return out


def run_one(
    preset: str,
    seed: int,
    budget: float,
    max_rounds: int,
    out: Path,
    overrides: dict,
    name: str | None = None,
) -> dict:
    """One preset (with `overrides`) and seed, in `out/<name>-s<seed>`, extended a round at a
    time until the budget is spent."""
    name = name or preset
    rounds = 1
    while True:
        cfg = load_config(preset, overrides={**overrides, "rounds": rounds, "seed": seed})
        summary = run(cfg, out / f"{name}-s{seed}", show_progress=False, log=lambda *_: None)
        spent = training_seconds(summary)
        done = len(summary["rounds"]) - 1
        if spent[-1] >= budget or done >= max_rounds:
            break
        rounds = done + 1
    return {
        "preset": name,
        "seed": seed,
        "seconds": spent,
        "pass@1": [r["heldout"]["pass@1"] for r in summary["rounds"]],
        "by_level": [r["heldout"]["by_level"] for r in summary["rounds"]],
    }


def at_budget(curve: dict, budget: float) -> float:
    """pass@1 at exactly `budget` training seconds: linear between the last round within it and
    the round that crosses it, so a method whose rounds cost more gets no more time than one
    whose rounds cost less (counting the crossing round whole gave it up to a round's worth);
    the last round's pass@1 when the run stopped before the budget (`--max-rounds`)."""
    seconds, pass1 = curve["seconds"], curve["pass@1"]
    for i in range(1, len(seconds)):
        if seconds[i] >= budget:
            share = (budget - seconds[i - 1]) / (seconds[i] - seconds[i - 1])
            return pass1[i - 1] + share * (pass1[i] - pass1[i - 1])
    return pass1[-1]


def finish_plot(fig, ax, budget: float, title: str, path: Path) -> None:
    """Budget line, axes, title and legend of a held-out pass@1 against training CPU time plot;
    saved to `path`."""
    ax.axvline(budget, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training CPU seconds after the seed (held-out evaluation excluded)")
    ax.set_ylabel("held-out pass@1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budget", type=float, default=150.0, help="training CPU s after the seed")
    ap.add_argument("--max-rounds", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each uses one thread)")
    ap.add_argument("--testbed", choices=sorted(TESTBEDS), default="addition")
    ap.add_argument("--out", default="runs/methods")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change the testbed or every preset (e.g. train.lr=1e-4); use another --out",
    )
    args = ap.parse_args()
    out = Path(args.out)
    common = with_changes(COMMON, [*TESTBEDS[args.testbed], *args.set])
    jobs = [(p, s) for p in args.presets for s in args.seeds]
    curves: list[dict] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = []
        for p, s in jobs:
            preset, overrides = row_preset(p, common)
            futures.append(
                pool.submit(run_one, preset, s, args.budget, args.max_rounds, out, overrides, p)
            )
        for f in futures:
            c = f.result()
            curves.append(c)
            print(
                f"{c['preset']} seed {c['seed']}: "
                + " ".join(
                    f"{p:.1%}@{s:.0f}s" for p, s in zip(c["pass@1"], c["seconds"], strict=True)
                ),
                flush=True,
            )
    print(
        f"\nheld-out pass@1 (levels {common['tasks']['heldout_levels']}, "
        f"{common['tasks']['heldout_per_level']} tasks each), {len(args.seeds)} seeds, "
        f"training budget {args.budget:.0f} s after the seed\n"
    )
    print(
        "| preset | round 0 | at budget | gain, mean (per seed) | rounds | improves in every seed |"
    )
    print("|---|---|---|---|---|---|")
    table = {}
    for preset in args.presets:
        mine = [c for c in curves if c["preset"] == preset]
        r0 = [c["pass@1"][0] for c in mine]
        end = [at_budget(c, args.budget) for c in mine]
        gains = [e - s for e, s in zip(end, r0, strict=True)]
        rounds = [len(c["pass@1"]) - 1 for c in mine]
        table[preset] = {"round0": r0, "at_budget": end, "gains": gains, "curves": mine}
        print(
            f"| {preset} | {statistics.mean(r0):.1%} | {statistics.mean(end):.1%} | "
            f"{statistics.mean(gains) * 100:+.1f} pts ({', '.join(f'{g * 100:+.1f}' for g in gains)}) | "
            f"{min(rounds)}-{max(rounds)} | {'yes' if min(gains) > 0 else 'no'} |"
        )
    (out / "methods.json").write_text(
        json.dumps({"common": common, "budget": args.budget, "presets": table}, indent=2) + "\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for preset, row in table.items():
        n = min(len(c["pass@1"]) for c in row["curves"])
        xs = [statistics.mean(c["seconds"][i] for c in row["curves"]) for i in range(n)]
        ys = [100 * statistics.mean(c["pass@1"][i] for c in row["curves"]) for i in range(n)]
        ax.plot(xs, ys, marker="o", label=preset)
    title = f"methods from the same seed, mean of {len(args.seeds)} seed(s)"
    finish_plot(fig, ax, args.budget, title, out / "methods.png")
    print(f"\n{out / 'methods.json'}, {out / 'methods.png'}")


if __name__ == "__main__":
    main()
