"""The propose phase's optional stages, glued to the loop: the learned proposer of
`creator.mode: self-play` (`tasks/proposer.py`), LLM-driven evolution (`tasks/llm_evolve.py`,
`creator.llm_evolve`) and the reliability filter (`tasks/reliability.py`,
`creator.reliability`), plus the proposer's share of the process phase (its training
examples). `loop/run.py` calls these through thin hooks; every choice lives in the modules
named above.

What they reject is written as the round's `rejected_tasks.parquet` (atomically, through
`loop/store.py`); redoing the phase after a kill rewrites the same file from the same seed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from reasonloop.config import SELF_PLAY_FAMILIES, LLMEvolveConfig, RunConfig
from reasonloop.loop.store import write_records
from reasonloop.models.base import LanguageModel
from reasonloop.models.openai import OpenAIBackendError, OpenAIModel
from reasonloop.tasks import proposer
from reasonloop.tasks.base import Family
from reasonloop.tasks.llm_evolve import Settings, evolve_tasks
from reasonloop.tasks.reliability import RejectedTask, check_tasks
from reasonloop.types import Judgement, SFTExample, Task, Trace

REJECTED_FILE = "rejected_tasks.parquet"


def self_play_tasks(
    cfg: RunConfig,
    family: Family,
    model: LanguageModel,
    levels: list[int],
    exclude: set[str],
    rng: random.Random,
    seed: int,
    r: int,
) -> tuple[list[Task], list[RejectedTask], dict[str, Any]]:
    """The round's tasks written by the model itself (verified in the sandbox), topped up with
    generator tasks when fewer than `proposer.min_tasks` verify."""
    if not isinstance(family, proposer.Proposable):
        raise ValueError(
            f"creator.mode 'self-play' needs a family the proposer can write programs for "
            f"(tasks.family: {' or '.join(SELF_PLAY_FAMILIES)}), got {family.name!r}"
        )
    p = cfg.creator.proposer
    proposals = proposer.sample_proposals(model, levels, p, seed, cfg.reasoner.batch_size)
    made_by = f"{proposer.PROPOSER_MARK}r{r - 1}"
    tasks, rejects, info = proposer.verify_proposals(
        family, proposals, cfg.creator.per_round, exclude, r, made_by
    )
    info["levels_asked"] = list(levels)
    missing = p.min_tasks - len(tasks)
    filled: list[Task] = []
    if missing > 0:
        taken = exclude | {t.id for t in tasks}
        for t in family.make_batch(rng, [levels[i % len(levels)] for i in range(2 * missing)]):
            if t.id not in taken and len(filled) < missing:
                t.round = r
                taken.add(t.id)
                filled.append(t)
    info["filled"] = len(filled)
    return tasks + filled, rejects, info


def evolve_client(c: LLMEvolveConfig) -> OpenAIModel:
    """The client of `creator.llm_evolve`'s endpoint."""
    return OpenAIModel(
        base_url=c.base_url or "",
        model=c.model_name or "",
        api_key_env=c.api_key_env,
        api=c.api,
        timeout_s=c.timeout_s,
    )


def llm_evolve_stage(
    cfg: RunConfig,
    family: Family,
    tasks: list[Task],
    exclude: set[str],
    seed: int,
    r: int,
) -> tuple[list[Task], list[RejectedTask], dict[str, Any]]:
    """The round's tasks plus those an LLM endpoint evolved from them (`creator.llm_evolve`);
    parents stay in the round, so every evolved task's parent is a stored record."""
    c = cfg.creator.llm_evolve
    client = evolve_client(c)
    settings = Settings(
        model_name=c.model_name or "",
        temperature=c.temperature,
        max_new_tokens=c.max_new_tokens,
        max_chars=c.max_chars,
        ascii_only=c.ascii_only,
        seed=seed,
    )
    n = max(1, int(round(cfg.creator.per_round * c.share)))
    try:
        evolved, rejects, info = evolve_tasks(
            client,
            family,
            tasks,
            c.operators,
            n,
            random.Random(seed),
            r,
            settings,
            exclude | {t.id for t in tasks},
        )
    except OpenAIBackendError as e:
        # Name the section: the run's own model may be tiny, and "openai backend" would puzzle.
        raise type(e)(f"creator.llm_evolve: {e}", status=e.status, attempts=e.attempts) from None
    finally:
        client.close()
    return tasks + evolved, rejects, info


def reliability_stage(
    cfg: RunConfig,
    family: Family,
    tasks: list[Task],
    model: LanguageModel | None,
    seed: int,
) -> tuple[list[Task], list[RejectedTask], dict[str, Any]]:
    """`creator.reliability` on the round's tasks (the sampled check only when a model is
    given: rounds after 0)."""
    return check_tasks(tasks, family, cfg.creator.reliability, model, cfg.reasoner, seed)


def write_rejections(round_dir: Path, rejects: list[RejectedTask]) -> None:
    """The round's rejected tasks, with their reasons."""
    write_records(round_dir / REJECTED_FILE, rejects, RejectedTask)


def proposer_training(
    cfg: RunConfig,
    family: Family,
    tasks: list[Task],
    traces: list[Trace],
    judgements: list[Judgement],
    r: int,
) -> tuple[list[SFTExample], dict[str, Any]]:
    """The proposer's SFT examples of round `r` and their reward statistics: round 0, generator
    programs (the format); later rounds, the proposals with a positive learnability reward."""
    p = cfg.creator.proposer
    if r == 0:
        assert isinstance(family, proposer.Proposable)
        rng = random.Random(cfg.seed * 7 + 11)
        # Every level the proposer may be asked for (up to `creator.max_level`, else the
        # hardest held-out one), so `?L<n>:` means n operations (digits) before the frontier
        # gets there: asked for a level it never saw, it writes shorter or broken programs.
        top = max(cfg.tasks.heldout_levels + cfg.tasks.seed_levels)
        if cfg.creator.max_level is not None:
            top = max(top, cfg.creator.max_level)
        levels = [lv for lv in family.levels if lv <= top]
        examples = proposer.seed_examples(family, rng, p.seed_examples, levels, r)
        return examples, {"trained": len(examples)}
    rates = proposer.solve_rates(traces, judgements)
    return proposer.proposer_examples(tasks, rates, p.min_reward, r)
