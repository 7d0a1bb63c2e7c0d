"""Evaluator-guided search side by side: pass@1, maj@16, ORM and PRM best-of-16, PRM-weighted
vote, PRM beam search and PRM MCTS at one budget, on held-out tasks the seed solves 20-70% of.

    python benchmarks/search.py [--seeds 0 1 2] [--jobs 3] [--dim 64] [--layers 4]
                                [--seed-steps 4000] [--train-tasks 800] [--label-tasks 800]
                                [--label-temperature 1.5] [--k 8] [--label-traces 3000]
                                [--mc 16] [--labels full]
                                [--no-solved-only] [--no-surprise] [--corruptions 1.0]
                                [--no-train-backbone]
                                [--prm-steps 1500]
                                [--heldout 100] [--budget 16] [--temperatures 0.7 1.0 1.3]
                                [--aggregate probe] [--out runs/search]

Per seed, in one process (`--jobs`: seeds in parallel processes):

1. Seed: a tiny model is SFT-trained on reference traces of step-format addition
   (`x+y+c=t` per column, then `#` and the answer) of the seed levels, deliberately briefly, so
   that some levels are only partly learned. The band: the levels whose greedy pass@1 on probe
   tasks (fresh, never evaluated on) lies in [--band-low, --band-high].
2. Evaluators: `--k` samples per fresh training task of the band levels, judged by the gold
   verifier. An ORM trains on all of them. The PRM's pool adds `--k` samples of as many more
   tasks at `--label-temperature` (wider errors), keeps the traces of tasks some sample solved
   (`--solved-only`), and `--label-traces` distinct ones get Monte-Carlo step labels
   (Math-Shepherd's full scan, and OmegaPRM's binary search on the same traces with the same
   rollouts per prefix, for the cost comparison); a PRM, with its surprise term unless
   `--no-surprise` (and with the seed's backbone frozen under `--no-train-backbone`: only its
   head and surprise weight learn), trains on the `--labels` ones, plus, for a `--corruptions`
   share of the traces that start with a good step, a copy with one digit of such a step
   changed and labelled bad from there on (`evaluator/step_corruption.py`).
3. Search settings, chosen on the probe tasks of the band levels (never reported): for each of
   `--temperatures`, one draw of `--budget` samples per probe task, PRM-scored; the sampling
   temperature and step-score aggregation (or the fixed `--aggregate`) with the highest PRM
   best-of-N accuracy there are the ones the held-out figures use. The same grid on the held-out
   tasks is printed beside it, to show what the choice cost or gained.
4. Search on the held-out tasks of the band levels, all at one budget (`--budget` full
   samples' worth of tokens) and the chosen temperature and aggregation: the sample-based
   methods share ONE draw of `--budget` samples per task (they differ only by how they
   select); beam search keeps `beam_width` partial solutions
   and samples `expansions` next steps from each (`beam_width * expansions = budget`); MCTS stops
   once it has generated `budget` times the task's greedy solution's tokens (`loop.heldout_search`
   wires both, as a round's eval does).
5. First-error localisation: held-out reference traces with one step made wrong (`inject_error`),
   scored by the PRM: the share whose first step below 0.5 is the injected one.

Prints the tables (one per seed, then the mean over seeds with the min-max spread) and writes
search.json into --out. The seed model and its evaluators are cached in --out (each keyed by its
recipe), so a second run with other evaluator settings skips the seed, and one with other search
settings skips both.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import random
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import (
    ModelConfig,
    ProcessRewardModelConfig,
    ReasonerConfig,
    RunConfig,
    SearchConfig,
    TrainConfig,
)
from reasonloop.evaluator.calibration import auroc
from reasonloop.evaluator.consensus import majority_vote
from reasonloop.evaluator.math_shepherd import label_traces, solved_only
from reasonloop.evaluator.process_reward_model import (
    AGGREGATIONS,
    PRM_FILE,
    ProcessRewardModel,
    aggregate,
    calibration_report,
    train_prm,
)
from reasonloop.evaluator.reward_model import ORM_FILE, OutcomeRewardModel, train_orm
from reasonloop.evaluator.step_corruption import with_corruptions
from reasonloop.loop.heldout_search import search_metrics
from reasonloop.loop.store import atomic_write_json
from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.models.tiny import TinyModel
from reasonloop.reasoner.search import Searched, best_of_n, search, weighted_majority_vote
from reasonloop.tasks.families.addition import AdditionFamily
from reasonloop.types import SFTExample, Task, Trace

METHODS = (
    "pass@1",
    "maj@N",
    "ORM best-of-N",
    "PRM best-of-N",
    "PRM weighted vote",
    "PRM beam",
    "PRM MCTS",
    "pass@N (ceiling)",
)


def draw(family: AdditionFamily, rng: random.Random, level: int, n: int, exclude: set[str]):
    """`n` distinct tasks of `level` not in `exclude` (fewer when the level has fewer)."""
    out: dict[str, Task] = {}
    for _ in range(n * 20):
        t = family.make(rng, level)
        if t.id not in exclude:
            out.setdefault(t.id, t)
        if len(out) == n:
            break
    return list(out.values())


def right(family: AdditionFamily, task: Task, answer: str | None) -> bool:
    return family.verify(task, answer) == 1.0


class _InBand(Exception):
    """Raised from the training callback to stop the seed once a probe level is in the band."""


def seed_model(
    args: argparse.Namespace,
    seed: int,
    family: AdditionFamily,
    exclude: set[str],
    probe: dict[int, list[Task]],
    out: Path,
) -> tuple[LanguageModel, dict[str, Any]]:
    """The SFT seed, trained here or read from the cache when its recipe was trained before.

    Where a level's pass@1 climbs from 0 to 100% depends on the initial weights and the data
    order, so the seed is not trained for a fixed number of steps: every `--check-every` steps the probe
    tasks are decoded greedily, and training stops at the first check where the hardest seed
    level's pass@1 lies inside the band shrunk by `--band-margin` on each side (a level just
    inside the band at one check can be past it at the next) while every easier level is at
    `--master` or above. The hardest level, and only once the others are learned: a seed
    stopped halfway through learning gives evaluators built from it nothing to judge with
    (measured on one seed stopped with 2 digits at 93% and 3 at 81%: ORM and PRM AUROC 0.54-0.62
    on its 4-digit samples, and 0.74 even for a PRM trained on oracle step labels; a seed
    trained until 3 digits were at 99% gave 0.85-0.90).
    `--seed-steps` is the most it trains."""
    mcfg = ModelConfig(
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        max_seq_len=args.max_seq_len,
        threads=args.threads,
    )
    tcfg = TrainConfig(
        lr=args.seed_lr, steps=args.seed_steps, batch_size=args.seed_batch, warmup_steps=50
    )
    recipe = {
        "model": mcfg.model_dump(),
        "train": tcfg.model_dump(),
        "levels": args.seed_levels,
        "examples": args.seed_examples,
        "seed": seed,
        "stop": [args.band_low + args.band_margin, args.band_high - args.band_margin, args.master],
        "check_every": args.check_every,
        "exclude": hashlib.sha256("".join(sorted(exclude)).encode()).hexdigest(),
        "probe": hashlib.sha256(
            "".join(t.id for ts in probe.values() for t in ts).encode()
        ).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = out / f"seed-s{seed}-{key}"
    if (path / "model.safetensors").exists() and (path / "seed.json").exists():
        info = json.loads((path / "seed.json").read_text())
        return TinyModel.load(path), info | {"cached": str(path)}
    rng = random.Random(seed)
    examples = []
    levels = args.seed_levels
    for i in range(args.seed_examples):
        t = family.make(rng, levels[i % len(levels)])
        if t.id not in exclude:
            examples.append(SFTExample(t.prompt, family.completion(t).rstrip("\n"), task_id=t.id))
    model = TinyModel.create(mcfg, seed)
    lo, hi = args.band_low + args.band_margin, args.band_high - args.band_margin
    top = max(args.seed_levels)
    checks: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def check(d: dict) -> None:
        if (d["step"] + 1) % args.check_every:
            return
        p1 = {
            lv: rate(greedy_pass(model, family, ts, args.max_new_tokens)[0])
            for lv, ts in probe.items()
        }
        checks.append({"step": d["step"] + 1, "pass@1": {str(k): v for k, v in p1.items()}})
        if lo <= p1[top] <= hi and all(p1[lv] >= args.master for lv in p1 if lv < top):
            raise _InBand

    with contextlib.suppress(_InBand):
        train_sft(model, examples, tcfg, seed, on_step=check)
    info = {
        "steps": checks[-1]["step"] if checks else args.seed_steps,
        "seconds": time.perf_counter() - t0,
        "checks": checks,
    }
    model.save(path)
    (path / "seed.json").write_text(json.dumps(info, indent=2) + "\n")
    return model, info | {"cached": None}


def greedy_pass(model: LanguageModel, family: AdditionFamily, tasks: list[Task], max_new: int):
    """(correct per task, tokens per task) of greedy decoding."""
    comps = model.generate([t.prompt for t in tasks], 1, Sampling(0.0, max_new_tokens=max_new))
    return (
        [right(family, t, family.parse(c[0].text)[1]) for t, c in zip(tasks, comps, strict=True)],
        [c[0].n_tokens for c in comps],
    )


def judged(
    family: AdditionFamily, tasks: list[Task], comps: list, tag: str
) -> tuple[list[Trace], dict[str, bool]]:
    """Each task's sampled completions as traces (ids `task/{tag}{i}`) and their gold verdicts."""
    traces: list[Trace] = []
    verdicts: dict[str, bool] = {}
    for task, cs in zip(tasks, comps, strict=True):
        for i, c in enumerate(cs):
            steps, answer = family.parse(c.text)
            tr = Trace(f"{task.id}/{tag}{i}", task.id, c.text, steps, answer, "seed")
            traces.append(tr)
            verdicts[tr.id] = right(family, task, answer)
    return traces, verdicts


def rate(xs: list[bool]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def evaluators_dir(
    args: argparse.Namespace, seed: int, model: LanguageModel, band: list[int], out: Path
) -> Path:
    """Where this seed model's evaluators are cached: keyed by the model's weights and every
    setting that shapes the evaluators."""
    recipe = {
        k: getattr(args, k)
        for k in (
            "train_tasks",
            "k",
            "orm_steps",
            "label_tasks",
            "label_temperature",
            "label_traces",
            "solved_only",
            "surprise",
            "train_backbone",
            "corruptions",
            "mc",
            "labels",
            "label",
            "balance",
            "prm_steps",
            "rm_lr",
            "max_new_tokens",
        )
    }
    recipe["band"] = band
    recipe["seed"] = seed
    recipe["model"] = hashlib.sha256(
        b"".join(p.detach().float().cpu().numpy().tobytes() for p in model.module.parameters())
    ).hexdigest()
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return out / f"evaluators-s{seed}-{key}"


def evaluators(
    args: argparse.Namespace,
    seed: int,
    model: LanguageModel,
    family: AdditionFamily,
    band: list[int],
    taken: set[str],
    out: Path,
) -> tuple[OutcomeRewardModel, ProcessRewardModel, dict[str, Any], Path]:
    """The ORM and the PRM of this seed model, trained here or read from the cache when the
    same seed model and evaluator recipe were trained before (so a run that changes only the
    search settings skips sampling, labelling and training). Returns (orm, prm, info, dir)."""
    ckpt = evaluators_dir(args, seed, model, band, out)
    if all((ckpt / f).exists() for f in (ORM_FILE, PRM_FILE, "evaluators.json")):
        info = json.loads((ckpt / "evaluators.json").read_text())
        orm = OutcomeRewardModel.load(ckpt / ORM_FILE, model)
        prm = ProcessRewardModel.load(ckpt / PRM_FILE, model)
        return orm, prm, info | {"cached": str(ckpt)}, ckpt
    timings: dict[str, float] = {}
    max_new = args.max_new_tokens
    # -- evaluators: sample, judge, ORM, MC labels, PRM ------------------------------------
    t0 = time.perf_counter()
    train_rng = random.Random(30_000 + seed)
    train_tasks = [
        t for lv in band for t in draw(family, train_rng, lv, args.train_tasks // len(band), taken)
    ]
    sampling = Sampling(temperature=1.0, max_new_tokens=max_new, seed=40_000 + seed)
    comps = model.generate([t.prompt for t in train_tasks], args.k, sampling)
    traces, verdicts = judged(family, train_tasks, comps, "")
    by_id = {t.id: t for t in train_tasks}
    timings["sample"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    orm = OutcomeRewardModel.from_policy(model)
    orm_cfg = TrainConfig(lr=args.rm_lr, steps=args.orm_steps, batch_size=32, warmup_steps=20)
    orm_info = train_orm(
        orm,
        [by_id[t.task_id].prompt for t in traces],
        [t.text for t in traces],
        [verdicts[t.id] for t in traces],
        orm_cfg,
        seed + 1,
    )
    timings["orm"] = time.perf_counter() - t0
    orm.save(ckpt / ORM_FILE)

    # The PRM's traces: the samples above, and as many fresh tasks sampled hotter: at the
    # policy's temperature the errors are the few the policy makes, and a PRM trained on those
    # alone does not know a digit changed anywhere else (measured: injected-error localisation
    # 57% from oracle labels of T=1 samples, 92% from T=1.5 ones; T=1.5 alone lost best-of-16).
    hot_tasks = [
        t
        for lv in band
        for t in draw(family, train_rng, lv, args.label_tasks // len(band), taken | set(by_id))
    ]
    hot = Sampling(temperature=args.label_temperature, max_new_tokens=max_new, seed=45_000 + seed)
    hot_comps = model.generate([t.prompt for t in hot_tasks], args.k, hot)
    hot_traces, hot_verdicts = judged(family, hot_tasks, hot_comps, "hot")
    by_id |= {t.id: t for t in hot_tasks}
    verdicts |= hot_verdicts
    pool = traces + hot_traces
    if args.solved_only:
        pool = solved_only(pool, verdicts)
    # Distinct (task, text) pairs only: a duplicate's labels would cost rollouts and teach
    # nothing new. Completions without steps stay in: they get one label (their verdict, 0),
    # and a PRM that never saw one rates such a stray answer as highly as a good solution
    # (measured: best-of-16 then picked them).
    distinct = list({(t.task_id, t.text): t for t in pool}.values())
    chosen = random.Random(50_000 + seed).sample(distinct, min(args.label_traces, len(distinct)))
    labellings = {}
    for method in ("full", "binary"):
        t0 = time.perf_counter()
        labellings[method] = label_traces(
            model,
            family,
            by_id,
            chosen,
            verdicts,
            args.mc,
            60_000 + seed,
            max_new,
            binary_search=method == "binary",
        )
        timings[f"label_{method}"] = time.perf_counter() - t0
    labels = labellings[args.labels]
    lab = {x.trace_id: x for x in labels.labels}
    # How often the two agree on the first error, and how often each matches the first step
    # the family's own check rejects (the MC label says "no rollout recovered", which is not
    # the same as "this step is wrong": a later step can still be copied right by luck).
    agree = rate(
        [
            a.first_error == b.first_error
            for a, b in zip(labellings["full"].labels, labellings["binary"].labels, strict=True)
        ]
    )

    t0 = time.perf_counter()
    prm = ProcessRewardModel.from_policy(model)
    prm_cfg = TrainConfig(lr=args.rm_lr, steps=args.prm_steps, batch_size=32, warmup_steps=20)
    prm_prompts, prm_texts, prm_labels, corrupted = with_corruptions(
        [by_id[t.task_id].prompt for t in chosen],
        [t.text for t in chosen],
        [lab[t.id].soft if args.label == "soft" else lab[t.id].hard for t in chosen],
        args.corruptions,
        random.Random(70_000 + seed),
    )
    prm_info = train_prm(
        prm,
        prm_prompts,
        prm_texts,
        prm_labels,
        prm_cfg,
        seed + 2,
        balance=args.balance,
        surprise=args.surprise,
        train_backbone=args.train_backbone,
    )
    timings["prm"] = time.perf_counter() - t0
    prm.save(ckpt / PRM_FILE)

    info = {
        "train": {
            "tasks": len(train_tasks),
            "traces": len(traces),
            "right_share": rate(list(verdicts.values())),
            "orm": {k: orm_info[k] for k in ("n", "n_pos", "steps", "loss_last", "train_accuracy")},
            "prm": {
                k: prm_info[k]
                for k in ("n", "places", "skipped", "steps", "loss_last", "surprise_weight")
            },
            "label_pool": len(distinct),
            "corrupted": corrupted,
        },
        "labelling": {
            "full": labellings["full"].cost(),
            "binary": labellings["binary"].cost(),
            "first_error_agreement": agree,
            "used": args.labels,
            "label": args.label,
        },
        "seconds": timings,
    }
    # Written last, atomically: the cache counts as present only once all three files are.
    atomic_write_json(ckpt / "evaluators.json", info)
    return orm, prm, info | {"cached": None}, ckpt


def scored_draw(
    model: LanguageModel,
    family: AdditionFamily,
    orm: OutcomeRewardModel | None,
    prm: ProcessRewardModel,
    tasks: list[Task],
    budget: int,
    temperature: float,
    seed: int,
    max_new: int,
) -> tuple[list[Searched], list[list[list[float]]]]:
    """One draw of `budget` samples per task, ORM-scored (`Searched.scores`; 0 without `orm`),
    and the PRM's step scores of every sample, per task."""
    sample = Sampling(temperature=temperature, max_new_tokens=max_new, seed=seed)
    scorer = orm.score if orm is not None else lambda ps, cs: [0.0] * len(cs)
    found = search(model, family, tasks, budget, sample, scorer)
    flat_p = [t.prompt for t, f in zip(tasks, found, strict=True) for _ in f.texts]
    flat_c = [c for f in found for c in f.texts]
    step_scores = prm.step_scores(flat_p, flat_c)
    per_task, at = [], 0
    for f in found:
        per_task.append(step_scores[at : at + len(f.texts)])
        at += len(f.texts)
    return found, per_task


def prm_selections(
    family: AdditionFamily,
    tasks: list[Task],
    found: list[Searched],
    per_task_steps: list[list[list[float]]],
) -> dict[str, dict[str, list[bool]]]:
    """Per step-score aggregation: whether PRM best-of-N and PRM-weighted voting are right on
    each task."""
    out: dict[str, dict[str, list[bool]]] = {}
    for how in AGGREGATIONS:
        bon, wv = [], []
        for t, f, ss in zip(tasks, found, per_task_steps, strict=True):
            scores = [aggregate(s, how) for s in ss]
            bon.append(right(family, t, best_of_n(f.answers, scores)[0]))
            wv.append(right(family, t, weighted_majority_vote(f.answers, scores)[0]))
        out[how] = {"best_of_n": bon, "weighted_vote": wv}
    return out


def rated(selections: dict[str, dict[str, list[bool]]]) -> dict[str, dict[str, float]]:
    """`prm_selections`' per-task outcomes as accuracies."""
    return {how: {k: rate(v) for k, v in sel.items()} for how, sel in selections.items()}


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)  # a --jobs worker starts with torch's default
    torch.manual_seed(seed)
    family = AdditionFamily(steps=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    # Level 1 has only 100 distinct tasks: holding some out would leave the seed without them.
    candidates = list(range(2, max(args.seed_levels) + 2))
    # Held-out and probe tasks are fixed per level before anything trains, and excluded from
    # every training set: the band is chosen on the probe tasks, the figures come from held-out.
    held_rng, probe_rng = random.Random(10_000 + seed), random.Random(20_000 + seed)
    heldout: dict[int, list[Task]] = {}
    probe: dict[int, list[Task]] = {}
    taken: set[str] = set()
    for lv in candidates:
        heldout[lv] = draw(family, held_rng, lv, args.heldout, taken)
        taken |= {t.id for t in heldout[lv]}
        probe[lv] = draw(family, probe_rng, lv, args.probe, taken)
        taken |= {t.id for t in probe[lv]}

    t0 = time.perf_counter()
    if args.seed_model:  # a given checkpoint, e.g. to try evaluator recipes on one seed
        model: LanguageModel = TinyModel.load(args.seed_model)
        seed_info: dict[str, Any] = {"cached": args.seed_model}
    else:
        model, seed_info = seed_model(args, seed, family, taken, probe, out)
    timings["seed"] = time.perf_counter() - t0
    max_new = args.max_new_tokens

    t0 = time.perf_counter()
    probe_p1 = {lv: rate(greedy_pass(model, family, ts, max_new)[0]) for lv, ts in probe.items()}
    band = [lv for lv, p in probe_p1.items() if args.band_low <= p <= args.band_high]
    if not band:  # say so, and still measure the level nearest the band's middle
        mid = (args.band_low + args.band_high) / 2
        band = [min(probe_p1, key=lambda lv: abs(probe_p1[lv] - mid))]
    timings["band"] = time.perf_counter() - t0
    print(
        f"seed {seed}: probe pass@1 "
        + " ".join(f"L{lv} {p:.0%}" for lv, p in probe_p1.items())
        + f" -> band levels {band}",
        flush=True,
    )

    orm, prm, ev, ckpt = evaluators(args, seed, model, family, band, taken, out)
    timings |= {k: v for k, v in ev["seconds"].items() if ev["cached"] is None}

    # -- search on the held-out band tasks ---------------------------------------------------
    tasks = [t for lv in band for t in heldout[lv]]
    n = len(tasks)
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str, oks: list[bool], tokens: float, seconds: float) -> None:
        by_level: dict[int, list[bool]] = defaultdict(list)
        for t, ok in zip(tasks, oks, strict=True):
            by_level[t.difficulty].append(ok)
        rows[name] = {
            "accuracy": rate(oks),
            "by_level": {str(lv): rate(v) for lv, v in sorted(by_level.items())},
            "tokens_per_task": tokens / n,
            "seconds": seconds,
        }

    t0 = time.perf_counter()
    oks, lengths = greedy_pass(model, family, tasks, max_new)
    row("pass@1", oks, sum(lengths), time.perf_counter() - t0)

    # The sampling temperature and the step-score aggregation are chosen on the probe tasks
    # (never reported), by PRM best-of-N accuracy; the held-out figures then use that choice.
    probe_tasks = [t for lv in band for t in probe[lv]]
    on_probe: dict[float, dict[str, dict[str, float]]] = {}
    for temp in args.temperatures:
        p_found, p_steps = scored_draw(
            model,
            family,
            None,
            prm,
            probe_tasks,
            args.budget,
            temp,
            75_000 + seed + args.draw_seed,
            max_new,
        )
        on_probe[temp] = rated(prm_selections(family, probe_tasks, p_found, p_steps))
    allowed = AGGREGATIONS if args.aggregate == "probe" else (args.aggregate,)
    # max keeps the first of equals: the order of --temperatures, then AGGREGATIONS'.
    temperature, how_chosen = max(
        ((temp, how) for temp in args.temperatures for how in allowed),
        key=lambda th: on_probe[th[0]][th[1]]["best_of_n"],
    )
    # Weighted voting shares the draw (so the temperature) and picks its own aggregation.
    how_vote = max(allowed, key=lambda how: on_probe[temperature][how]["weighted_vote"])

    # The held-out grid of every setting, printed beside the choice; only the chosen draw is
    # ORM-scored, since only its rows are reported.
    grid: dict[str, dict[str, Any]] = {}
    for temp in args.temperatures:
        t0 = time.perf_counter()
        found_t, steps_t = scored_draw(
            model,
            family,
            orm if temp == temperature else None,
            prm,
            tasks,
            args.budget,
            temp,
            70_000 + seed + args.draw_seed,
            max_new,
        )
        draw_s_t = time.perf_counter() - t0
        selections_t = prm_selections(family, tasks, found_t, steps_t)
        on_held = rated(selections_t)
        if temp == temperature:
            found, draw_s, selections = found_t, draw_s_t, selections_t
        for how in AGGREGATIONS:
            grid[f"T={temp:g} {how}"] = {
                "temperature": temp,
                "aggregate": how,
                "probe": on_probe[temp][how],
                "heldout": on_held[how],
            }
    sample_tokens = sum(f.tokens for f in found)

    row(
        "maj@N",
        [right(family, t, majority_vote(f.answers)[0]) for t, f in zip(tasks, found, strict=True)],
        sample_tokens,
        draw_s,
    )
    row(
        "ORM best-of-N",
        [right(family, t, f.best_of_n) for t, f in zip(tasks, found, strict=True)],
        sample_tokens,
        draw_s,
    )
    row(
        "ORM weighted vote",
        [right(family, t, f.weighted_majority) for t, f in zip(tasks, found, strict=True)],
        sample_tokens,
        draw_s,
    )
    row("PRM best-of-N", selections[how_chosen]["best_of_n"], sample_tokens, draw_s)
    row("PRM weighted vote", selections[how_vote]["weighted_vote"], sample_tokens, draw_s)
    aggregations = rated(selections)
    row(
        "pass@N (ceiling)",
        [any(right(family, t, a) for a in f.answers) for t, f in zip(tasks, found, strict=True)],
        sample_tokens,
        draw_s,
    )

    # Beam search and MCTS exactly as a round's eval runs them (`reasoner.search`).
    for method, name in (("beam", "PRM beam"), ("mcts", "PRM MCTS")):
        cfg = RunConfig(
            model=model.config,
            reasoner=ReasonerConfig(
                max_new_tokens=max_new,
                search=SearchConfig(
                    method=method,
                    budget=args.budget,
                    scorer="prm",
                    aggregate=how_chosen,
                    temperature=temperature,
                    beam_width=args.beam_width,
                    expansions=args.budget // args.beam_width
                    if method == "beam"
                    else args.mcts_expansions,
                    c_puct=args.c_puct,
                ),
            ),
            evaluator={"process_reward_model": ProcessRewardModelConfig(enabled=True)},
            strategy={"algorithm": "rft"},
        )
        t0 = time.perf_counter()
        m = search_metrics(cfg, family, tasks, model, model, ckpt, 80_000 + seed + args.draw_seed)
        key = f"{method}@{args.budget}"
        by_level = m[f"{key}_by_level"]
        rows[name] = {
            "accuracy": m[key],
            "by_level": by_level,
            "tokens_per_task": m["tokens"] / n,
            "seconds": time.perf_counter() - t0,
        }

    # -- calibration and first-error localisation --------------------------------------------
    t0 = time.perf_counter()
    held_traces, held_verdicts = [], {}
    for t, f in zip(tasks, found, strict=True):
        for i, (text, a) in enumerate(zip(f.texts, f.answers, strict=True)):
            tr = Trace(f"{t.id}/{i}", t.id, text, family.parse(text)[0], a, "seed")
            held_traces.append(tr)
            held_verdicts[tr.id] = right(family, t, a)
    calib = calibration_report(
        prm,
        family,
        {t.id: t for t in tasks},
        held_traces,
        held_verdicts,
        how_chosen,
        injected=args.injected,
        seed=90_000 + seed,
    )
    orm_scores = [s for f in found for s in f.scores]
    calib["orm_auroc"] = auroc(orm_scores, [held_verdicts[tr.id] for tr in held_traces])
    timings["calibration"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    return {
        "seed": seed,
        "band": band,
        "probe_pass@1": {str(k): v for k, v in probe_p1.items()},
        "heldout_tasks": n,
        "seed_model": seed_info,
        "evaluators": ev["cached"],
        "train": ev["train"],
        "labelling": ev["labelling"],
        "methods": rows,
        "chosen": {"temperature": temperature, "aggregate": how_chosen, "vote_aggregate": how_vote},
        "grid": grid,
        "aggregations": aggregations,
        "calibration": calib,
        "seconds": timings,
    }


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_seed(r: dict[str, Any], budget: int) -> None:
    levels = [str(lv) for lv in r["band"]]
    print(f"\n### seed {r['seed']}: held-out levels {levels}, {r['heldout_tasks']} tasks")
    print(
        "\n| method | accuracy | " + " | ".join(f"L{lv}" for lv in levels) + " | tokens/task | s |"
    )
    print("|---|---|" + "---|" * len(levels) + "---|---|")
    for name in (*METHODS[:3], "ORM weighted vote", *METHODS[3:]):
        m = r["methods"][name]
        label = name.replace("N", str(budget)) if name != "PRM MCTS" else name
        print(
            f"| {label} | {pct(m['accuracy'])} | "
            + " | ".join(pct(m["by_level"].get(lv)) for lv in levels)
            + f" | {m['tokens_per_task']:.0f} | {m['seconds']:.0f} |"
        )
    ch = r["chosen"]
    print(
        f"\nchosen on the probe tasks: sampling temperature {ch['temperature']:g} and aggregation "
        f"{ch['aggregate']} (by PRM best-of-N), {ch['vote_aggregate']} for weighted voting:\n"
    )
    print(
        "| T, aggregation | probe: PRM best-of-N | weighted vote | held-out: PRM best-of-N | weighted vote |"
    )
    print("|---|---|---|---|---|")
    for name, g in r["grid"].items():
        p, h = g["probe"], g["heldout"]
        print(
            f"| {name} | {pct(p['best_of_n'])} | {pct(p['weighted_vote'])} | "
            f"{pct(h['best_of_n'])} | {pct(h['weighted_vote'])} |"
        )
    lab = r["labelling"]
    print(
        "\n| MC labelling | traces | steps | rollouts | rollouts/step | s |\n|---|---|---|---|---|---|"
    )
    for method in ("full", "binary"):
        c = lab[method]
        print(
            f"| {method} | {c['traces']} | {c['steps']} | {c['rollouts']} | "
            f"{c['rollouts_per_step']:.2f} | {c['seconds']:.1f} |"
        )
    full, binary = lab["full"], lab["binary"]
    saving = 1 - binary["rollouts"] / full["rollouts"] if full["rollouts"] else 0.0
    print(
        f"binary search saves {saving:.0%} of the rollouts "
        f"({full['seconds'] / max(binary['seconds'], 1e-9):.1f}x less time); first errors agree on "
        f"{lab['first_error_agreement']:.0%} of traces; PRM trained on {lab['used']} {lab['label']} labels"
    )
    c = r["calibration"]
    print(
        f"PRM: first-error localisation on injected errors {pct(c.get('first_error_accuracy_injected'))} "
        f"(n={c.get('injected_n')}), on sampled wrong traces {pct(c['first_error_accuracy'])} "
        f"(n={c['first_error_n']}); AUROC {num(c['auroc'])} (ORM {num(c['orm_auroc'])}), ECE {num(c['ece'])}"
    )
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()))


def print_mean(results: list[dict[str, Any]], budget: int) -> None:
    print(f"\n### mean over seeds {[r['seed'] for r in results]} (min-max)\n")
    chosen = ", ".join(
        f"seed {r['seed']}: T={r['chosen']['temperature']:g} {r['chosen']['aggregate']}"
        f" (vote: {r['chosen']['vote_aggregate']})"
        for r in results
    )
    print(f"chosen on the probe tasks: {chosen}\n")
    print("| method | accuracy | tokens/task |\n|---|---|---|")
    for name in (*METHODS[:3], "ORM weighted vote", *METHODS[3:]):
        xs = [r["methods"][name]["accuracy"] for r in results]
        tok = statistics.mean(r["methods"][name]["tokens_per_task"] for r in results)
        label = name.replace("N", str(budget)) if name != "PRM MCTS" else name
        print(f"| {label} | {statistics.mean(xs):.1%} ({min(xs):.0%}-{max(xs):.0%}) | {tok:.0f} |")
    loc = [r["calibration"].get("first_error_accuracy_injected") or 0.0 for r in results]
    print(
        f"| first-error localisation (injected) | {statistics.mean(loc):.1%} ({min(loc):.0%}-{max(loc):.0%}) | |"
    )


def targets(results: list[dict[str, Any]]) -> None:
    def mean(name: str) -> float:
        return statistics.mean(r["methods"][name]["accuracy"] for r in results)

    prm, maj, p1 = mean("PRM best-of-N"), mean("maj@N"), mean("pass@1")
    loc = statistics.mean(
        r["calibration"].get("first_error_accuracy_injected") or 0.0 for r in results
    )
    print("\ntargets (mean over seeds):")
    print(f"- PRM best-of-N - maj@N = {(prm - maj) * 100:+.1f} pts (target >= +5)")
    print(f"- PRM best-of-N - pass@1 = {(prm - p1) * 100:+.1f} pts (target >= +15)")
    print(f"- first-error localisation (injected) = {loc:.1%} (target >= 70%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", default="runs/search")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    g = ap.add_argument_group("seed model")
    g.add_argument("--dim", type=int, default=64)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--max-seq-len", type=int, default=96)
    g.add_argument("--seed-levels", nargs="+", type=int, default=[1, 2, 3, 4])
    g.add_argument("--seed-examples", type=int, default=20000)
    g.add_argument("--seed-model", help="a tiny checkpoint directory to use instead of training")
    g.add_argument("--seed-steps", type=int, default=4000, help="at most (see --check-every)")
    g.add_argument("--seed-batch", type=int, default=64)
    g.add_argument("--seed-lr", type=float, default=0.001)
    g.add_argument("--check-every", type=int, default=80, help="seed steps between band checks")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g = ap.add_argument_group("band and held-out tasks")
    g.add_argument("--band-low", type=float, default=0.2)
    g.add_argument("--band-high", type=float, default=0.7)
    g.add_argument("--master", type=float, default=0.6, help="easier levels' pass@1 at the stop")
    g.add_argument(
        "--band-margin", type=float, default=0.1, help="the seed stops inside the band by this much"
    )
    g.add_argument("--probe", type=int, default=100, help="probe tasks per level (choose the band)")
    g.add_argument("--heldout", type=int, default=100, help="held-out tasks per band level")
    g = ap.add_argument_group("evaluators")
    g.add_argument("--train-tasks", type=int, default=800, help="tasks sampled at T=1")
    g.add_argument("--k", type=int, default=8, help="samples per training task")
    g.add_argument("--orm-steps", type=int, default=400)
    g.add_argument(
        "--label-tasks", type=int, default=800, help="more tasks, sampled hotter, for the PRM"
    )
    g.add_argument("--label-temperature", type=float, default=1.5)
    g.add_argument("--label-traces", type=int, default=3000, help="distinct traces MC-labelled")
    g.add_argument(
        "--solved-only",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="label only traces of tasks some sample solved",
    )
    g.add_argument(
        "--surprise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the PRM's learned surprise term",
    )
    g.add_argument(
        "--train-backbone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fine-tune the PRM's copy of the seed (off: head and surprise weight only)",
    )
    g.add_argument(
        "--corruptions",
        type=float,
        default=1.0,
        help="share of the labelled traces the PRM also sees with a digit of a good step changed",
    )
    g.add_argument("--mc", type=int, default=16, help="rollouts per labelled prefix")
    g.add_argument("--labels", choices=["full", "binary"], default="full")
    g.add_argument("--label", choices=["soft", "hard"], default="hard")
    g.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--prm-steps", type=int, default=1500)
    g.add_argument("--rm-lr", type=float, default=1e-3)
    g.add_argument("--injected", type=int, default=200)
    g = ap.add_argument_group("search")
    g.add_argument("--budget", type=int, default=16)
    g.add_argument(
        "--temperatures",
        nargs="+",
        type=float,
        default=[0.7, 1.0, 1.3],
        help="sampling temperatures tried; the probe tasks choose one",
    )
    g.add_argument(
        "--draw-seed",
        type=int,
        default=0,
        help="added to the search draws' sampling seeds (another draw of the same settings)",
    )
    g.add_argument(
        "--aggregate",
        choices=[*AGGREGATIONS, "probe"],
        default="probe",
        help="step-score aggregation; 'probe': the probe tasks choose one",
    )
    g.add_argument("--beam-width", type=int, default=4)
    g.add_argument("--mcts-expansions", type=int, default=4)
    g.add_argument("--c-puct", type=float, default=1.0)
    args = ap.parse_args()
    if args.budget % args.beam_width:
        ap.error(f"--budget ({args.budget}) must be a multiple of --beam-width ({args.beam_width})")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        # Seeds in parallel processes; each seed's figures do not depend on the others.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            n = len(args.seeds)
            results = list(pool.map(run_seed, [args] * n, args.seeds, [out] * n))
    else:
        results = [run_seed(args, seed, out) for seed in args.seeds]
    for r in results:
        print_seed(r, args.budget)
    if len(results) > 1:
        print_mean(results, args.budget)
    targets(results)
    (out / "search.json").write_text(
        json.dumps({"args": vars(args), "seeds": results}, indent=2) + "\n"
    )
    print(f"\n{out / 'search.json'}")


if __name__ == "__main__":
    main()
