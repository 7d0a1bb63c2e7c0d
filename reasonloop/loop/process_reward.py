"""The process reward model's part of a round (`evaluator.process_reward_model`), kept out of
`run.py`, which calls it at three places:

- process phase (`label_train_filter`): a seeded subset of the round's sampled traces (of tasks one
  of them solved, with `solved_only`) gets Monte-Carlo step labels from rollouts of the round's
  starting model (`math_shepherd.py`), capped by step agreement among the task's samples with
  `agreement` (`step_agreement.py`); the PRM (carried from the previous checkpoint, or a fresh
  copy of the policy) trains on them and is written to the round directory; then it scores the
  traces the outcome evaluator kept, drops those whose aggregated score is below the threshold, and
  keeps the best `top_k` per task. Every draw comes from the phase's seed, so a redone phase writes
  the same records.
- train phase: `run.py` copies the round's PRM into the checkpoint (`prm.safetensors`), so the
  next round carries it and eval reads it from there.
- eval phase (`calibrate`): the PRM scores samples of the held-out tasks from the round's model
  and reference traces with one injected wrong step: `calibration.prm`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from reasonloop.config import RunConfig
from reasonloop.evaluator.math_shepherd import label_traces, solved_only
from reasonloop.evaluator.process_reward_model import (
    ProcessRewardModel,
    aggregate,
    calibration_report,
    train_prm,
)
from reasonloop.evaluator.step_agreement import agreement_labels, combine
from reasonloop.evaluator.step_corruption import with_corruptions
from reasonloop.loop import faults
from reasonloop.models.base import LanguageModel, Sampling
from reasonloop.models.rollouts import Rollouts
from reasonloop.tasks.base import Family
from reasonloop.types import Decision, Judgement, Task, Trace

LABELS_FILE = "prm_labels.parquet"
"""Step-level Judgements of the round: the Monte-Carlo labels (`math-shepherd:r{N}`), the
labelled traces' step supports with `agreement` (`agreement:r{N}`) and the PRM's scores
(`prm:r{N}`). A file of its own: judgements.parquet holds the solve phase's outcome
verdicts, which other phases read by trace id whatever their level."""


def label_train_filter(
    cfg: RunConfig,
    r: int,
    seed: int,
    family: Family,
    tasks: dict[str, Task],
    traces: list[Trace],
    judgements: list[Judgement],
    decisions: list[Decision],
    model: LanguageModel,
    gen: Rollouts,
    carried_from: Path,
    save_to: Path,
) -> tuple[list[Decision], list[Judgement], dict[str, Any]]:
    """Label, train, save to `save_to`, filter. Returns the new decisions (kept traces the PRM
    rejects become drops with their reason), step Judgements and the phase info
    (`prm: {labelling, train, dropped}`)."""
    pc = cfg.evaluator.process_reward_model
    verdicts = {j.trace_id: bool(j.verdict) for j in judgements if j.level == "outcome"}
    sampled = [
        t
        for t in traces
        if t.id in verdicts and not t.decoding.get("hint") and tasks[t.task_id].answer is not None
    ]
    # Support counts every sample of the task, solved or not: a slip is rare among all of them.
    support = agreement_labels(sampled) if pc.agreement else {}
    if pc.solved_only:
        sampled = solved_only(sampled, verdicts)
    rng = random.Random(seed)
    chosen = rng.sample(sampled, min(pc.max_traces, len(sampled)))
    labelling = label_traces(
        gen,
        family,
        tasks,
        chosen,
        verdicts,
        pc.mc_samples,
        seed,
        cfg.reasoner.max_new_tokens,
        pc.temperature,
        cfg.reasoner.batch_size,
        pc.binary_search,
    )
    by_trace = {t.id: t for t in chosen}
    labelled = [(by_trace[x.trace_id], x) for x in labelling.labels]
    carried = pc.carry and carried_from.exists()
    prm = (
        ProcessRewardModel.load(carried_from, model)
        if carried
        else ProcessRewardModel.from_policy(model)
    )
    if carried and not pc.train_backbone:  # the head carries on over this round's policy
        prm.backbone.module.load_state_dict(model.module.state_dict())
    labels = [x.soft if pc.label == "soft" else x.hard for _, x in labelled]
    lowered = 0
    if support:
        capped = [
            combine(m, support[t.id]) if t.id in support else m
            for (t, _), m in zip(labelled, labels, strict=True)
        ]
        lowered = sum(c != m for c, m in zip(capped, labels, strict=True))
        labels = capped
    # Corrupted copies are not records: they follow from the labels and the phase's seed.
    prompts, texts, labels, corrupted = with_corruptions(
        [tasks[t.task_id].prompt for t, _ in labelled],
        [t.text for t, _ in labelled],
        labels,
        pc.corruptions,
        random.Random(seed + 2),
    )
    info = train_prm(
        prm,
        prompts,
        texts,
        labels,
        pc.train,
        seed + 1,
        pc.balance,
        # A training step like the Reasoner's: the resume tests' `train` kill point lands here too.
        on_step=lambda _: faults.hit("train"),
        surprise=pc.surprise,
        train_backbone=pc.train_backbone,
    )
    prm.save(save_to)

    # Filter and rank the kept traces by the aggregated step score.
    kept_ids = {d.trace_id for d in decisions if d.kept}
    kept = [t for t in traces if t.id in kept_ids]
    step = prm.step_scores([tasks[t.task_id].prompt for t in kept], [t.text for t in kept])
    score = {t.id: aggregate(s, pc.aggregation) for t, s in zip(kept, step, strict=True)}
    why: dict[str, str] = {}
    per_task: dict[str, list[Trace]] = defaultdict(list)
    for t in kept:
        if score[t.id] < pc.threshold:
            why[t.id] = f"prm_score below {pc.threshold}"
        else:
            per_task[t.task_id].append(t)
    if pc.top_k is not None:
        for group in per_task.values():
            # Stable sort: equal scores keep trace order, so the choice is reproducible.
            for t in sorted(group, key=lambda t: -score[t.id])[pc.top_k :]:
                why[t.id] = f"prm rank below top {pc.top_k}"
    out = [
        Decision(d.trace_id, False, why[d.trace_id], round=d.round) if d.trace_id in why else d
        for d in decisions
    ]
    records = (
        [
            Judgement(t.id, f"math-shepherd:r{r}", "step", x.soft, verdicts[t.id], round=r)
            for t, x in labelled
        ]
        + [
            Judgement(t.id, f"agreement:r{r}", "step", support[t.id], verdicts[t.id], round=r)
            for t, _ in labelled
            if t.id in support
        ]
        + [
            Judgement(t.id, f"prm:r{r}", "step", s, score[t.id] >= pc.threshold, round=r)
            for t, s in zip(kept, step, strict=True)
        ]
    )
    train_keys = (
        "n",
        "places",
        "skipped",
        "steps",
        "seconds",
        "loss_first",
        "loss_last",
        "surprise_weight",
    )
    dropped: dict[str, int] = defaultdict(int)
    for reason in why.values():
        dropped[reason] += 1
    return (
        out,
        records,
        {
            "labelling": labelling.cost(),
            "train": {k: info[k] for k in train_keys}
            | {"carried": carried, "corrupted": corrupted, "lowered_by_agreement": lowered},
            "scored": len(kept),
            "dropped": dict(dropped),
        },
    )


def calibrate(
    cfg: RunConfig,
    path: Path,
    family: Family,
    heldout: list[Task],
    model: LanguageModel,
    gen: Rollouts,
    seed: int,
) -> dict[str, Any]:
    """`calibration.prm`: the PRM at `path` on samples of the held-out tasks from the round's
    model (already synced to `gen`) and on reference traces with one injected wrong step."""
    pc = cfg.evaluator.process_reward_model
    prm = ProcessRewardModel.load(path, model)
    sampling = Sampling(temperature=1.0, max_new_tokens=cfg.reasoner.max_new_tokens, seed=seed)
    comps = gen.generate(
        [t.prompt for t in heldout], pc.calibration_samples, sampling, cfg.reasoner.batch_size
    )
    traces, verdicts = [], {}
    for task, cs in zip(heldout, comps, strict=True):
        for i, c in enumerate(cs):
            steps, answer = family.parse(c.text)
            t = Trace(f"{task.id}/{i}", task.id, c.text, steps, answer, "calibration")
            traces.append(t)
            verdicts[t.id] = family.verify(task, answer) == 1.0
    return calibration_report(
        prm,
        family,
        {t.id: t for t in heldout},
        traces,
        verdicts,
        pc.aggregation,
        pc.injected,
        seed + 1,
    )
