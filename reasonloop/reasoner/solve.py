"""The Reasoner's sampling: k step-by-step solutions per task, batched, as Trace records."""

from __future__ import annotations

from reasonloop.config import ReasonerConfig
from reasonloop.models.base import Completion, LanguageModel, Sampling
from reasonloop.models.rollouts import Progress, Rollouts, as_rollouts
from reasonloop.reasoner.hint import hinted
from reasonloop.tasks.base import Family
from reasonloop.types import Task, Trace, stable_id


def solve(
    model: LanguageModel | Rollouts,
    family: Family,
    tasks: list[Task],
    cfg: ReasonerConfig,
    seed: int,
    producer: str,
    rnd: int,
    hint: bool = False,
    progress: Progress | None = None,
) -> list[Trace]:
    """k traces per task; the first is greedy when `cfg.greedy_sample` (or temperature is 0).

    `model` generates in this process, or give `Rollouts` (`loop/cluster.py`) to spread the
    sampling over workers: the traces are the same either way (fixed shards, each its own seed)."""
    gen = as_rollouts(model)
    prompts = [hinted(t.prompt, t.answer or "") if hint else t.prompt for t in tasks]
    greedy = Sampling(temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=seed)
    per_task: list[list[tuple[Completion, dict]]] = [[] for _ in tasks]
    sampled = Sampling(
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=seed + 1,
    )
    if cfg.temperature == 0:
        groups = [(greedy, 1)]
    elif cfg.greedy_sample:
        groups = [(greedy, 1), (sampled, cfg.samples - 1)]
    else:
        groups = [(sampled, cfg.samples)]
    for sampling, n in groups:
        if n <= 0:
            continue
        how = {
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
        }
        for i, comps in enumerate(gen.generate(prompts, n, sampling, cfg.batch_size, progress)):
            per_task[i].extend((c, how) for c in comps)
    traces = []
    for task, comps in zip(tasks, per_task, strict=True):
        length = family.answer_length(task) if cfg.cut_at_answer_length else None
        for j, (c, how) in enumerate(comps):
            text = c.text
            steps, answer = family.parse(text)
            decoding = {**how, "sample": j}
            if hint:
                decoding["hint"] = True
            if not c.stopped:
                decoding["cut"] = True
                head = _at_length(family, text, length)
                if head is not None:
                    text, (steps, answer) = head, family.parse(head)
                    decoding["truncated"] = True
                elif cfg.cut_has_no_answer:
                    answer = None
            traces.append(
                Trace(
                    id=stable_id(task.id, producer, rnd, j, hint),
                    task_id=task.id,
                    text=text,
                    steps=steps,
                    answer=answer,
                    producer=producer,
                    decoding=decoding,
                    round=rnd,
                    n_tokens=c.n_tokens,
                )
            )
    return traces


def reference_traces(family: Family, tasks: list[Task], rnd: int) -> list[Trace]:
    """Gold step-by-step traces from the family's reference solver (the supervised seed)."""
    out = []
    for t in tasks:
        steps, answer = family.reference(t)
        out.append(
            Trace(
                id=stable_id(t.id, "reference"),
                task_id=t.id,
                text=family.render(steps, answer),
                steps=steps,
                answer=answer,
                producer="reference",
                decoding={},
                round=rnd,
            )
        )
    return out


def _at_length(family: Family, text: str, length: int | None) -> str | None:
    """`text` cut where an answer of `length` characters ends, with the stop a finished sample
    writes, when its first `length` characters are such an answer; else None."""
    if length is None or len(text) < length:
        return None
    head = text[:length] + "\n"
    _, answer = family.parse(head)
    return head if answer is not None and len(answer) == length else None
