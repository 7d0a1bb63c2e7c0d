"""reasoning-gym datasets as task families: `gym:<dataset>`.

`GymFamily("countdown", min_numbers=4)` serves the dataset's entries as Tasks. Options are
fields of the dataset's config (`reasoning_gym.create_dataset(name, **options)`), plus our own
`curriculum_mode`.

Difficulty. A dataset with a reasoning-gym curriculum gets one level per curriculum level
(0 = easiest); level L sets every curriculum attribute to its level L (capped at the attribute's
last level). `curriculum_mode="inclusive"` (default, reasoning-gym's own) draws from the easiest
value up to level L's; `"upper_bound"` draws from level L's own range only, so levels are
disjoint, but some generators then fail (countdown at levels 1-3, letter_jumble at 2-3, in
reasoning-gym 0.1.25). A level that repeats an easier level's config is dropped; a level whose
config the dataset rejects is skipped and recorded in `invalid` with the reason (caesar_cipher,
rubiks_cube, survo, modulo_grid have some). Options set by the user win over the curriculum.
A dataset without a curriculum has the single level 0.

Drawing. Each level is one dataset with a fixed `seed` (option, default 0) and `size` (option,
default `POOL`, or the dataset's own default for datasets that generate everything up front);
`make(rng, level)` draws an index from `rng`, so the same rng state gives the same task.
Entries are cached per (dataset, config, index): some generators are slow (countdown ~15 ms,
knight_swap ~0.3 s per item; jugs, number_sequence and zebra_puzzles took over 20 s for one
item at their top level here) and the held-out set is re-made every round. A generator that
raises on an index is retried on another (`MAX_TRIES`), then `make` raises.

Scoring. `verify` gets the entry back (from the cache, else generated again from
`params["index"]`; if that fails or gives another prompt, rebuilt from the task's prompt,
answer and `params["metadata"]`) and returns the dataset's own `score_answer`, raw. Beware: that score gives partial credit (the
default scorer gives `len(gold) / len(answer)` when the gold answer is a substring, so
`-142820` scores 0.857 against `-14282`; countdown gives 0.01 for any wrong answer). A filter on
a model's own answers must require exactly 1.0. A None answer scores 0.0 without calling the
scorer. Some scorers evaluate the answer text (countdown uses sympy's `parse_expr`, which calls
`eval`): run verification of untrusted output in a sandboxed worker where that matters.

Reference traces: reasoning-gym has no step traces, so `reference` gives no steps, only the
answer.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import random
import warnings
from collections import OrderedDict
from functools import lru_cache
from typing import Any, ClassVar, Literal

from reasonloop.evaluator import verifiers
from reasonloop.tasks.base import Family
from reasonloop.types import Task

POOL = 100_000
"""Default dataset size: the number of distinct indices a level draws from."""
EAGER = frozenset({"acre", "word_ladder"})
"""Datasets that build all `size` entries when created, or cap `size`: they keep their default."""
MAX_TRIES = 5
"""Indices tried before `make` gives up on a generator that keeps failing."""
BROKEN_SCORERS = {
    "game_of_life_halting": "its score_answer compares bool(answer) with bool(gold), so any "
    "non-empty answer scores 1.0: useless as a reward",
}
"""Datasets whose scorer cannot be trusted (reasoning-gym 0.1.25); using them warns."""
CACHE_ENTRIES = 50_000
"""Generated entries kept in memory (least recently used go first)."""

_entries: OrderedDict[tuple[str, str, int], dict[str, Any] | Exception] = OrderedDict()


class GymFamily(Family):
    """A reasoning-gym dataset as a task family (see the module docstring)."""

    name: ClassVar[str] = "gym"

    def __init__(
        self,
        dataset: str,
        curriculum_mode: Literal["upper_bound", "inclusive"] = "inclusive",
        **options: Any,
    ) -> None:
        rg = _reasoning_gym()
        if dataset not in rg.factory.DATASETS:
            close = difflib.get_close_matches(dataset, rg.factory.DATASETS, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown reasoning-gym dataset {dataset!r}{hint} "
                f"({len(rg.factory.DATASETS)} datasets: reasoning_gym.factory.DATASETS lists them)"
            )
        if curriculum_mode not in ("upper_bound", "inclusive"):
            raise ValueError(
                f"gym:{dataset}: curriculum_mode must be 'upper_bound' or 'inclusive', got {curriculum_mode!r}"
            )
        config_cls = rg.factory.DATASETS[dataset][1]
        known = {f.name for f in dataclasses.fields(config_cls)}
        for key in options:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(
                    f"gym:{dataset}: unknown option {key!r}{hint} (config fields: {sorted(known)})"
                )
        try:
            options = json.loads(json.dumps(options))  # tasks store them in params: JSON only
        except TypeError as e:
            raise ValueError(
                f"gym:{dataset}: options must be JSON values (numbers, strings, lists): {e}"
            ) from None
        super().__init__(dataset=dataset, curriculum_mode=curriculum_mode, **options)
        self.dataset = dataset
        self.name = f"gym:{dataset}"  # type: ignore[misc]  # one family per dataset
        fixed = {
            "seed": options.pop("seed", 0),
            "size": options.pop("size", config_cls().size if dataset in EAGER else POOL),
        }
        self.configs: dict[int, dict[str, Any]] = {}
        self.invalid: dict[int, str] = {}
        """Curriculum levels whose config the dataset rejects (a reasoning-gym quirk), with why."""
        curriculum = _curriculum_configs(dataset, curriculum_mode)
        for level, fields in enumerate(curriculum):
            config = {**fields, **options, **fixed}
            if config in self.configs.values():
                continue  # the same tasks as an easier level: not a level of its own
            try:
                c = config_cls(**config)
                if hasattr(c, "validate"):
                    c.validate()
            except (AssertionError, ValueError, TypeError) as e:
                self.invalid[level] = f"config {config} rejected: {e or 'validation failed'}"
                continue
            self.configs[level] = config
        if not self.configs:
            raise ValueError(
                f"{self.name}: no valid config at any level (options override the curriculum's "
                f"fields): {self.invalid}"
            )
        self.levels = tuple(self.configs)  # type: ignore[misc]
        if dataset in BROKEN_SCORERS:
            warnings.warn(f"{self.name}: {BROKEN_SCORERS[dataset]}", stacklevel=2)

    def make(self, rng: random.Random, level: int) -> Task:
        if level not in self.configs:
            why = f" (level {level}: {self.invalid[level]})" if level in self.invalid else ""
            raise ValueError(
                f"{self.name}: level must be in {list(self.levels)}, got {level!r}{why}"
            )
        config = self.configs[level]
        for attempt in range(MAX_TRIES):
            index = rng.randrange(config["size"])
            try:
                entry = _entry(self.dataset, config, index)
                break
            except Exception as e:  # some generators give up on some seeds: draw another
                if attempt == MAX_TRIES - 1:
                    raise RuntimeError(
                        f"{self.name}: generation failed at level {level} for {MAX_TRIES} indices "
                        f"in a row; last (index {index}): {type(e).__name__}: {e}"
                    ) from e
        answer = entry.get("answer")
        params = {
            "dataset": self.dataset,
            "config": config,
            "index": index,
            # a JSON round trip now, so that scoring sees the same metadata before and after
            # the task is stored (tuples become lists, and so on)
            "metadata": json.loads(json.dumps(entry.get("metadata", {}), default=str)),
        }
        return self.task(
            str(entry["question"]), None if answer is None else str(answer), level, params
        )

    def reference(self, task: Task) -> tuple[list[str], str]:
        if task.answer is None:
            raise ValueError(f"{self.name}: task {task.id} has no gold answer")
        return [], task.answer

    def verify(self, task: Task, answer: str | None) -> float:
        """The dataset's own `score_answer`, raw (partial credit included), clamped to [0, 1].

        A task with `params["scoring"] == "answer"` (an LLM-evolved question with a new answer,
        `llm_evolve.evolved_params`) has no dataset entry of its own: it scores 1.0 when the
        answer equals its gold answer as text or as a number."""
        if answer is None:
            return 0.0
        p = task.params
        if p.get("scoring") == "answer":
            return max(verifiers.exact(answer, task.answer), verifiers.numeric(answer, task.answer))
        if not all(k in p for k in ("dataset", "config", "metadata")):
            raise ValueError(
                f"{self.name}: task {task.id} lacks params 'dataset', 'config' and 'metadata' "
                f"(it was not made by GymFamily)"
            )
        dataset = _dataset(p["dataset"], _key(p["config"]))
        entry = _scoring_entry(task)
        try:
            score = float(dataset.score_answer(answer, entry))
        except Exception:  # model output is untrusted; a scorer that chokes on it means wrong
            return 0.0
        return min(max(score, 0.0), 1.0) if math.isfinite(score) else 0.0

    def backward(self, task: Task, answer: str) -> list[Task]:
        """FOBAR's template questions (`evaluator/forward_backward.py`) for a numeric answer:
        a number of the question becomes X, to be found from the answer."""
        return self.template_backward(task, answer)


def _scoring_entry(task: Task) -> dict[str, Any]:
    """The entry `score_answer` expects.

    Preferably the generated entry itself (cached, else generated again from its index): some
    scorers compare against metadata types that JSON does not keep (arc_agi's tuple grids
    become lists and never match). If that fails or the prompt differs (another reasoning-gym
    version), the entry is rebuilt from the task's prompt, answer and stored metadata.
    """
    p = task.params
    if "index" in p:
        try:
            entry = _entry(p["dataset"], p["config"], p["index"])
        except Exception:
            entry = None
        if entry is not None and entry.get("question") == task.prompt:
            return entry
    return {"question": task.prompt, "answer": task.answer, "metadata": p["metadata"]}


def _reasoning_gym():
    """The library, imported on first use (importing it takes about a second)."""
    import reasoning_gym

    return reasoning_gym


def _curriculum_configs(dataset: str, mode: str) -> list[dict[str, Any]]:
    """For each curriculum level, the config fields the curriculum sets ([{}] without one)."""
    rg = _reasoning_gym()
    if not rg.factory.has_curriculum(dataset):
        return [{}]
    from reasoning_gym.coaching.attributes import RangeAttributeDefinition
    from reasoning_gym.coaching.base_curriculum import DefaultCurriculumContext, RangeAttributeMode

    curriculum = rg.factory.create_curriculum(dataset)
    attrs = curriculum.attributes.values()
    names = [
        n
        for a in attrs
        for n in (
            (a.lower_field_name, a.upper_field_name)
            if isinstance(a, RangeAttributeDefinition)
            else (a.field_name,)
        )
    ]
    context = DefaultCurriculumContext(mode=RangeAttributeMode(mode))
    out = []
    for level in range(max((len(a.levels) for a in attrs), default=1)):
        curriculum.set_global_level(level)
        config = curriculum.generate_configuration(context=context)
        out.append(json.loads(json.dumps({n: getattr(config, n) for n in names})))
    return out


def _key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


@lru_cache(maxsize=256)
def _dataset(dataset: str, config_key: str):
    """One dataset object per (name, config): creating some takes a tenth of a second."""
    return _reasoning_gym().create_dataset(dataset, **json.loads(config_key))


def _entry(dataset: str, config: dict[str, Any], index: int) -> dict[str, Any]:
    """The entry at `index`, from the cache or generated. A generator's failure is cached too
    (countdown spends ~0.7 s failing on an index): every later draw of it fails at once."""
    key = (dataset, _key(config), index)
    if key in _entries:
        _entries.move_to_end(key)
        got = _entries[key]
    else:
        try:
            got = _dataset(dataset, key[1])[index]
        except Exception as e:
            got = e
        _entries[key] = got
        if len(_entries) > CACHE_ENTRIES:
            _entries.popitem(last=False)
    if isinstance(got, Exception):
        raise got
    return got
