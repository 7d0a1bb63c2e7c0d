"""summary.json: the machine-readable result of a run (documented in the README), and its plot."""

from __future__ import annotations

import json
from typing import Any

from reasonloop.config import RunConfig
from reasonloop.loop.store import RunDir, atomic_write_json
from reasonloop.report.plot import plot_heldout

SUMMARY_VERSION = 1


def write_summary(rd: RunDir, cfg: RunConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    rounds = []
    for key in sorted(manifest.get("rounds", {}), key=int):
        if manifest["rounds"][key].get("done"):
            rounds.append(json.loads((rd.round_dir(int(key)) / "metrics.json").read_text()))
    seed_levels = set(cfg.tasks.seed_levels)
    beyond = [str(lv) for lv in cfg.tasks.heldout_levels if lv not in seed_levels]

    def beyond_mean(m: dict[str, Any]) -> float | None:
        vals = [m["heldout"]["by_level"][k] for k in beyond if k in m["heldout"]["by_level"]]
        return sum(vals) / len(vals) if vals else None

    for m in rounds:
        m["heldout"]["beyond_seed"] = beyond_mean(m)
    summary: dict[str, Any] = {
        "version": SUMMARY_VERSION,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "family": cfg.tasks.family,
        "seed_levels": sorted(seed_levels),
        "beyond_seed_levels": [int(k) for k in beyond],
        "rounds": rounds,
        "complete": len(rounds) == cfg.rounds + 1,
    }
    if rounds:
        first, last = rounds[0]["heldout"], rounds[-1]["heldout"]
        summary["heldout_change"] = {
            "pass@1": last["pass@1"] - first["pass@1"],
            "beyond_seed": (last["beyond_seed"] - first["beyond_seed"])
            if first["beyond_seed"] is not None
            else None,
        }
        summary["reward_hacking"] = reward_hacking(rounds)
        summary["seconds"] = sum(m["seconds"]["total"] for m in rounds)
        summary["plot"] = plot_heldout(
            rounds, rd.root / "heldout.png", title=f"{cfg.preset or 'run'} (seed {cfg.seed})"
        )
    atomic_write_json(rd.root / "summary.json", summary)
    return summary


def reward_hacking(rounds: list[dict[str, Any]], drop: float = 0.02) -> list[dict[str, Any]]:
    """Rounds whose training reward rose while held-out pass@1 fell by more than `drop`.

    The reward is what the round optimised: the mean sampled reward (GRPO, RLOO), or the share
    of preference pairs ranked right (DPO). Reward up with accuracy down means the learner found
    something the reward pays for that is not the skill: a wrong verifier, a consensus that
    agrees on wrong answers, or a judge it can please."""
    flagged = []
    for prev, cur in zip(rounds, rounds[1:], strict=False):
        for key in ("reward_mean", "accuracies_last"):
            r0, r1 = prev["train"].get(key), cur["train"].get(key)
            if r1 is None:
                continue
            a0, a1 = prev["heldout"]["pass@1"], cur["heldout"]["pass@1"]
            # Round 1 has no earlier reward of its kind: compare its end with its start.
            rose = (r1 > r0) if r0 is not None else False
            if rose and a1 < a0 - drop:
                flagged.append(
                    {
                        "round": cur["round"],
                        "reward": key,
                        "from": r0,
                        "to": r1,
                        "heldout_from": a0,
                        "heldout_to": a1,
                    }
                )
    return flagged
