"""Proposer/solver self-play: does the learned proposer's difficulty rise, and do its tasks stay
solvable and diverse? One table per run, a row per round.

    python benchmarks/self_play.py [--preset self-play-addition] [--seeds 0 1 2] [--jobs 1]
                                   [--out runs/self-play] [--set FIELD=VALUE ...]
    python benchmarks/self_play.py --report runs/self-play/s0 [runs/self-play/s1 ...]

Runs `reasonloop run --preset PRESET --seed S --out OUT/sS` for each seed, `--jobs` at a time
(a finished run is only read again; a killed one resumes), then reads each run's manifest:

- pass@1: held-out greedy accuracy, all levels and the levels beyond the seed's;
- asked: the levels the proposer was asked for (`?L<n>:`), chosen from the solver's measured
  learnability p(1-p) (`tasks/curriculum.py`);
- verified: the share of proposals the sandbox ran to a usable answer that is a task of the
  family (before dedup and the round's cap);
- difficulty: the mean and range of the kept proposals' levels (digits for addition, operations
  for programs): what the proposer actually wrote;
- distinct / jaccard: the share of distinct proposals and the mean pairwise n-gram Jaccard
  distance of the kept tasks (diversity: collapse shows as both falling);
- reward / trained: the mean learnability reward of the round's proposals and how many train
  the proposer; none / all: proposals no sample / every sample solved.

Ends with each run's verdict: the kept proposals' mean difficulty in the last round against
round 1, the lowest verified share and distinct share over the rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml


def rows(run: Path) -> list[dict]:
    """One dict per finished round of the run in `run`."""
    manifest = json.loads((run / "manifest.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    seed_levels = set(config["tasks"]["seed_levels"])
    out = []
    for key in sorted(manifest["rounds"], key=int):
        phases = manifest["rounds"][key]["phases"]
        if "eval" not in phases:
            break
        held = phases["eval"]["heldout"]
        by_level = {int(k): v for k, v in held.get("by_level", {}).items()}
        beyond = [v for lv, v in by_level.items() if lv not in seed_levels]
        sp = phases["propose"].get("self_play") or {}
        prop = phases["process"].get("proposer") or {}
        hist = [int(k) for k in (sp.get("difficulty_hist") or {})]
        out.append(
            {
                "round": int(key),
                "pass1": held["pass@1"],
                "beyond": sum(beyond) / len(beyond) if beyond else None,
                "by_level": by_level,
                "beyond_levels": sorted(set(by_level) - seed_levels),
                "asked": sp.get("levels_asked"),
                "verified": sp.get("verified_share"),
                "difficulty": sp.get("difficulty_mean"),
                "range": (min(hist), max(hist)) if hist else None,
                "distinct": sp.get("proposal_distinct"),
                "jaccard": sp.get("proposal_jaccard_distance"),
                "reward": prop.get("reward_mean"),
                "trained": prop.get("trained"),
                "none": prop.get("proposals_solved_by_none"),
                "all": prop.get("proposals_solved_by_all"),
                "kept": phases["process"].get("kept"),
            }
        )
    return out


def fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def report(run: Path) -> dict:
    """Print the run's table; return its verdict."""
    table = rows(run)
    print(f"\n{run}")
    head = (
        "round  pass@1  beyond  asked    verified  difficulty  range   distinct  jaccard"
        "  reward  trained  none/all  kept  beyond the seed by level"
    )
    print(head)
    for r in table:
        rng = f"{r['range'][0]}-{r['range'][1]}" if r["range"] else "-"
        asked = ",".join(str(x) for x in r["asked"]) if r["asked"] else "-"
        none_all = f"{r['none']}/{r['all']}" if r["none"] is not None else "-"
        levels = " ".join(
            f"L{lv}:{v:.0%}" for lv, v in sorted(r["by_level"].items()) if lv in r["beyond_levels"]
        )
        print(
            f"{r['round']:>5}  {r['pass1']:>6.1%}  {fmt(r['beyond'], '>6.1%'):>6}  {asked:<7}"
            f"  {fmt(r['verified'], '>8.1%'):>8}  {fmt(r['difficulty'], '>10.2f'):>10}  {rng:<6}"
            f"  {fmt(r['distinct'], '>8.3f'):>8}  {fmt(r['jaccard'], '>7.3f'):>7}"
            f"  {fmt(r['reward'], '>6.3f'):>6}  {fmt(r['trained'], '>7'):>7}  {none_all:>8}"
            f"  {fmt(r['kept'], '>4'):>4}  {levels}"
        )
    played = [r for r in table if r["difficulty"] is not None]
    if not played:
        return {"run": str(run), "rounds": len(table)}
    verdict = {
        "run": str(run),
        "difficulty_first": played[0]["difficulty"],
        "difficulty_last": played[-1]["difficulty"],
        "verified_min": min(r["verified"] for r in played),
        "distinct_min": min(r["distinct"] for r in played),
        "pass1_round0": table[0]["pass1"],
        "pass1_last": table[-1]["pass1"],
    }
    print(
        f"difficulty {verdict['difficulty_first']:.2f} (round {played[0]['round']}) -> "
        f"{verdict['difficulty_last']:.2f} (round {played[-1]['round']}); verified >= "
        f"{verdict['verified_min']:.1%}; distinct >= {verdict['distinct_min']:.3f}; held-out "
        f"{verdict['pass1_round0']:.1%} -> {verdict['pass1_last']:.1%}"
    )
    return verdict


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="self-play-addition")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/self-play"))
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (set model.threads)")
    ap.add_argument("--set", action="append", default=[], help="FIELD=VALUE, passed to the run")
    ap.add_argument("--report", type=Path, nargs="+", help="only read these finished runs")
    args = ap.parse_args()
    runs = args.report
    if not runs:
        runs, todo = [], []
        for seed in args.seeds:
            out = args.out / f"s{seed}"
            cmd = [sys.executable, "-m", "reasonloop.cli", "run", "--preset", args.preset]
            cmd += ["--seed", str(seed), "--out", str(out), "--quiet"]
            for s in args.set:
                cmd += ["--set", s]
            todo.append(cmd)
            runs.append(out)
        running: list[subprocess.Popen] = []
        for cmd in todo:
            while len(running) >= args.jobs:
                running.pop(0).wait()
            running.append(subprocess.Popen(cmd))
        failed = [p.args for p in running if p.wait() != 0]
        if failed:
            sys.exit(f"failed: {failed}")
    verdicts = [report(run) for run in runs]
    print("\n" + json.dumps(verdicts, indent=1))


if __name__ == "__main__":
    main()
