"""`reasonloop run | eval | presets`, and the commands of `_COMMAND_MODULES`."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from reasonloop.config import PRESETS_DIR, ConfigError, load_config, preset_names, validate


def _set(overrides: dict[str, Any], dotted: str) -> None:
    key, sep, raw = dotted.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {dotted!r}: expected FIELD=VALUE, e.g. --set train.steps=100")
    node = overrides
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(raw)


def table(summary: dict[str, Any]) -> str:
    rounds = summary["rounds"]
    levels = sorted({k for m in rounds for k in m["heldout"]["by_level"]}, key=int)
    seed = {str(x) for x in summary.get("seed_levels", [])}
    head = (
        ["round", "pass@1"]
        + [f"L{lv}{'*' if lv in seed else ''}" for lv in levels]
        + ["beyond", "kept", "secs"]
    )
    rows = []
    for m in rounds:
        h = m["heldout"]
        b = h.get("beyond_seed")
        rows.append(
            [str(m["round"]), f"{h['pass@1']:.1%}"]
            + [f"{h['by_level'][lv]:.0%}" if lv in h["by_level"] else "" for lv in levels]
            + [
                "" if b is None else f"{b:.1%}",
                str(m["data"]["kept"]),
                f"{m['seconds']['total']:.0f}",
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r) for r in rows
    ]
    lines.append(
        "(* = seed level, trained with gold labels; `beyond` = mean over the other levels)"
    )
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from reasonloop import distributed
    from reasonloop.loop.run import run

    overrides: dict[str, Any] = {}
    for s in args.set or []:
        _set(overrides, s)
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.seed is not None:
        overrides["seed"] = args.seed
    cfg = load_config(args.preset, args.config, overrides)
    out = Path(args.out or f"runs/{cfg.preset or 'run'}-s{cfg.seed}")
    if not distributed.is_main():  # under torchrun: only train alongside rank 0, which reports
        run(cfg, out, show_progress=False, log=lambda _: None)
        return 0
    print(
        f"reasonloop: {cfg.preset or 'custom'} run, {cfg.rounds} rounds after the seed, writing to {out}",
        flush=True,
    )
    summary = run(cfg, out, show_progress=not args.quiet, log=lambda line: print(line, flush=True))
    print()
    print(table(summary))
    ch = summary.get("heldout_change", {})
    if ch.get("beyond_seed") is not None:
        print(
            f"\nbeyond-seed held-out pass@1: {ch['beyond_seed'] * 100:+.1f} points from round 0 to round {summary['rounds'][-1]['round']}"
        )
    weak = _weak_seed(summary, cfg.tasks.seed_levels, cfg.tasks.seed_check)
    if weak:
        print(
            f"\nwarning: after the seed, held-out pass@1 on seed levels {weak} is below "
            f"tasks.seed_check ({cfg.tasks.seed_check}): the seed did not learn what it was "
            "shown, so the rounds had little to build on (docs/easy-to-hard.md)"
        )
    print(
        f"total {summary.get('seconds', 0):.0f}s; results: {out}/summary.json, plot: {out}/{summary.get('plot', '')}"
    )
    return 0


def _weak_seed(summary: dict, seed_levels: list[int], bar: float) -> dict[int, float]:
    """Seed levels whose round-0 held-out pass@1 is under `bar` (0: no check)."""
    rounds = summary.get("rounds") or []
    if not bar or not rounds or rounds[0].get("round") != 0:
        return {}
    by_level = (rounds[0].get("heldout") or {}).get("by_level") or {}
    return {
        lv: round(by_level[str(lv)], 2)
        for lv in seed_levels
        if str(lv) in by_level and by_level[str(lv)] < bar
    }


def cmd_eval(args: argparse.Namespace) -> int:
    from reasonloop.loop.heldout import evaluate, make_heldout
    from reasonloop.loop.run import check_checkpoint
    from reasonloop.loop.store import CorruptRunError, RunDir, read_records
    from reasonloop.models import load_model
    from reasonloop.tasks.registry import get_family
    from reasonloop.types import Task

    rd = RunDir(args.run_dir)
    cfg_path = rd.root / "config.yaml"
    if not cfg_path.exists():
        raise ConfigError(f"{rd.root}: not a run directory (no config.yaml)")
    cfg = validate(yaml.safe_load(cfg_path.read_text()) or {}, str(cfg_path))
    done = rd.trained_rounds()
    if not done:
        raise ConfigError(f"{rd.root}: no finished checkpoint to evaluate")
    r = done[-1] if args.round is None else args.round
    if r not in done:
        raise ConfigError(f"--round {r}: no checkpoint for that round in {rd.root} (have {done})")
    family = get_family(cfg.tasks.family, **cfg.tasks.options)
    if args.levels:
        tasks_cfg = cfg.tasks.model_copy(
            update={
                "heldout_levels": args.levels,
                "heldout_per_level": args.n or cfg.tasks.heldout_per_level,
            }
        )
        tasks = make_heldout(family, tasks_cfg)
    else:
        tasks = read_records(rd.root / "heldout.parquet", Task)
    try:
        check_checkpoint(rd.checkpoint(r), cfg.model)
        model = load_model(cfg.model, rd.checkpoint(r))
    except (CorruptRunError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"round {r} checkpoint: {e}") from e
    m = evaluate(model, family, tasks, cfg.reasoner.max_new_tokens, args.samples, seed=cfg.seed)
    m.pop("tokens", None)
    if args.json:
        print(json.dumps({"round": r, **m}, indent=2))
    else:
        print(f"round {r} checkpoint, {len(tasks)} tasks: pass@1 {m['pass@1']:.1%}")
        for lv, v in m["by_level"].items():
            extra = (
                f"  maj@{args.samples} {m[f'maj@{args.samples}_by_level'][lv]:.0%}"
                if args.samples
                else ""
            )
            print(f"  level {lv:>3}: {v:6.1%}{extra}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        first = (PRESETS_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ").strip()
        print(f"{name:14} {first}")
    if args.show:
        print(
            (PRESETS_DIR / f"{args.show}.yaml").read_text()
            if args.show in preset_names()
            else f"unknown preset {args.show}"
        )
    return 0


# Each module defines `register(sub)`, which adds its subcommand with `set_defaults(fn=...)`; the
# command's code lives beside what it shows, not here.
_COMMAND_MODULES: tuple[str, ...] = (
    "reasonloop.report.html",
    "reasonloop.report.inspect",
    "reasonloop.serve",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="reasonloop",
        description="A language model improves its own reasoning in a closed loop.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) a self-improvement run")
    r.add_argument(
        "--preset", help="a preset name (`reasonloop presets`); default easy-to-hard-packed"
    )
    r.add_argument("--config", help="a YAML config file (may name a `preset:` to start from)")
    r.add_argument(
        "--out", help="run directory (default runs/PRESET-sSEED); rerun the same command to resume"
    )
    r.add_argument("--rounds", type=int, help="self-improvement rounds after the seed round")
    r.add_argument("--seed", type=int)
    r.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a config field, e.g. train.steps=100",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=cmd_run)
    e = sub.add_parser(
        "eval", help="evaluate a run's checkpoint on its held-out set (or other levels)"
    )
    e.add_argument("run_dir")
    e.add_argument("--round", type=int, help="which round's checkpoint (default: the last)")
    e.add_argument(
        "--levels", type=int, nargs="+", help="evaluate fresh tasks at these levels instead"
    )
    e.add_argument("--n", type=int, help="tasks per level with --levels")
    e.add_argument("--samples", type=int, default=0, help="also report maj@k and pass@k")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)
    ps = sub.add_parser("presets", help="list the presets")
    ps.add_argument(
        "--show", metavar="NAME", help="print a preset's YAML (copy it to make your own)"
    )
    ps.set_defaults(fn=cmd_presets)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    args = p.parse_args(argv)
    from reasonloop.loop.run import RunMismatchError
    from reasonloop.loop.store import CorruptRunError
    from reasonloop.models.openai import OpenAIBackendError

    try:
        return args.fn(args)
    except (ConfigError, RunMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CorruptRunError, OpenAIBackendError) as e:
        # An endpoint that failed for good (down, 4xx, retries spent): the message names the
        # URL and what happened; a finished round stays, and the same command resumes.
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
