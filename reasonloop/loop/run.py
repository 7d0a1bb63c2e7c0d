"""The round loop, thin: it composes the modules and writes what each phase makes.

Each round runs five phases (propose, solve, process, train, eval). A phase writes its files
atomically, then records itself as done in the manifest. On restart, finished rounds are
skipped, finished phases are read back from disk, and an unfinished phase is redone from the
same derived seed, so a resumed run writes the same records as one never interrupted.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
import yaml
from safetensors import safe_open
from tqdm import tqdm

from reasonloop import distributed
from reasonloop.algorithms.behaviour_cloning import balance_levels, sft_examples, with_hinted_copies
from reasonloop.algorithms.dpo import preference_pairs, train_dpo
from reasonloop.algorithms.policy_gradient import (
    groups_from_round,
    train_policy_gradient,
    train_ppo,
)
from reasonloop.algorithms.seed_packing import packed
from reasonloop.algorithms.sft import train_sft
from reasonloop.algorithms.step_dpo import step_pairs
from reasonloop.algorithms.value_head import CRITIC_FILE, Critic
from reasonloop.config import ConfigError, ModelConfig, RunConfig, TrainConfig, validate
from reasonloop.evaluator.bradley_terry import BT_RM_FILE
from reasonloop.evaluator.consensus import judge_consensus
from reasonloop.evaluator.forward_backward import ForwardBackward, judge_forward_backward
from reasonloop.evaluator.generative_verifier import GenerativeVerifier, judge_generative
from reasonloop.evaluator.gold import judge_gold
from reasonloop.evaluator.process_reward_model import PRM_FILE
from reasonloop.evaluator.reward_model import ORM_FILE, OutcomeRewardModel, train_orm
from reasonloop.loop import correction, faults, process_reward, seed_stall
from reasonloop.loop.cluster import open_rollouts
from reasonloop.loop.creation import (  # the creator's optional stages (self-play, checks)
    evolve_client,
    llm_evolve_stage,
    proposer_training,
    reliability_stage,
    self_play_tasks,
    write_rejections,
)
from reasonloop.loop.heldout import evaluate, make_heldout
from reasonloop.loop.heldout_search import search_metrics
from reasonloop.loop.judges import (
    eval_scorers,
    judge_accuracy,
    train_pairwise,
    verifier_examples,
    with_verification,
)
from reasonloop.loop.resources import resources
from reasonloop.loop.rl_inputs import (
    dense_rewards,
    frozen_orm,
    gold_labels_in_training,
    orm_rewards_round,
    policy_gradient_inputs,
)
from reasonloop.loop.store import (
    CorruptRunError,
    RunDir,
    atomic_replace_dir,
    atomic_write_bytes,
    atomic_write_json,
    read_records,
    write_records,
)
from reasonloop.models import build_model, load_model
from reasonloop.models.base import LanguageModel
from reasonloop.models.openai import OpenAIBackendError, OpenAIModel
from reasonloop.models.rollouts import Rollouts
from reasonloop.postprocess.filter import process
from reasonloop.postprocess.summarise import SUMMARIES_FILE, summarise_kept, with_summaries
from reasonloop.reasoner.solve import reference_traces, solve
from reasonloop.report.diversity import distinct_share, mean_jaccard_distance, near_duplicates
from reasonloop.report.summary import write_summary
from reasonloop.report.tracking import PACKAGES, Tracker, flatten, missing, open_trackers
from reasonloop.tasks import creator, curriculum, evolve
from reasonloop.tasks.base import Family
from reasonloop.tasks.registry import get_family
from reasonloop.tasks.reliability import RejectedTask
from reasonloop.types import Decision, Judgement, PreferencePair, SFTExample, Task, Trace

PHASES = ("propose", "solve", "process", "train", "eval")
PREFERENCE = ("iterative-dpo", "step-dpo")
POLICY_GRADIENT = ("grpo", "rloo")
PPO_CURVES = ("value_loss", "explained_variance", "approx_kl")
"""PPO's per-step curves besides the policy loss, kl and clip_fraction (summary: `<name>_last`)."""


class RunMismatchError(RuntimeError):
    """The run directory holds a run made with a different config."""


def phase_seed(seed: int, rnd: int, phase: str) -> int:
    """Each phase draws from its own seed, so redoing one phase replays it exactly."""
    return (seed * 1_000_003 + rnd * 1009 + PHASES.index(phase) * 17) % (2**31 - 1)


@dataclass
class Round:
    """What one round has made so far (read back from disk on resume)."""

    r: int
    tasks: list[Task] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    examples: list[SFTExample] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)


class Bar:
    """A progress bar per phase showing items and tokens/s (silent when not a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, desc: str, total: int | None, unit: str = "it") -> tqdm:
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            disable=not self.enabled,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )


def _track(rd: RunDir, manifest: dict, r: int, trackers: dict[str, Tracker]) -> None:
    """Send a finished round to each tracker that has not had it (a tracker may be added when a
    run is resumed; one killed after sending but before the manifest says so sends it twice,
    at the same step, which trackers show as one point)."""
    state = manifest["rounds"][str(r)]
    todo = [n for n in trackers if n not in state.get("tracked", [])]
    if not todo:
        return
    metrics = flatten(json.loads((rd.round_dir(r) / "metrics.json").read_text()))
    metrics.pop("round", None)
    for name in todo:
        trackers[name].log(metrics, step=r)
    state["tracked"] = sorted(set(state.get("tracked", [])) | set(todo))
    rd.write_manifest(manifest)


def _check_config(rd: RunDir, cfg: RunConfig) -> None:
    path = rd.root / "config.yaml"
    new = cfg.model_dump(mode="json")
    if path.exists():
        try:
            old = validate(yaml.safe_load(path.read_text()) or {}, str(path)).model_dump(
                mode="json"
            )
        except Exception as e:
            raise RunMismatchError(
                f"{path}: cannot read the config of the run in this directory ({e})"
            ) from e
        # More rounds may be asked of a finished run, and trackers changed; anything else would
        # mix two runs.
        for key in ("rounds", "report_to"):
            old.pop(key, None)
            new.pop(key, None)
        # Where generation runs does not change what it makes; the shard size does.
        for c in (old, new):
            c["cluster"] = {"shard_size": c.get("cluster", {}).get("shard_size")}
        if old != new:
            diffs = _diff(old, new)
            raise RunMismatchError(
                f"{rd.root} holds a run with a different config ({len(diffs)} fields differ: {'; '.join(diffs[:5])}"
                f"{'; ...' if len(diffs) > 5 else ''}); "
                "use another --out, or the same config to resume"
            )
    atomic_write_bytes(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode())


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"`{prefix[:-1]}`: {a!r} in the run, {b!r} now"]


def _preflight(cfg: RunConfig) -> tuple[Family, list[Task]]:
    """Everything the config names must exist and parse before the run directory is touched,
    so a bad task file or model path leaves nothing half-written behind."""
    try:
        family = get_family(cfg.tasks.family, **cfg.tasks.options)
        heldout = make_heldout(family, cfg.tasks)
    except (ValueError, OSError, KeyError) as e:
        raise ConfigError(f"tasks.family {cfg.tasks.family!r}: {e}") from e
    if cfg.evaluator.kind == "forward-backward" and type(family).backward is Family.backward:
        raise ConfigError(
            f"evaluator.kind 'forward-backward': family {family.name!r} poses no backward "
            "questions (Family.backward); families that do: linear_equation, chain_sum, "
            "reasoning-gym datasets, task files with a numeric or math verifier"
        )
    if absent := missing(cfg.report_to):
        raise ConfigError(
            f"report_to {absent}: not installed; `pip install {' '.join(PACKAGES[n] for n in absent)}` "
            "(or `pip install reasonloop[tracking]`), or remove them from report_to"
        )
    m = cfg.model
    if m.backend == "hf" and m.path is not None and m.hf_config is None:
        path = Path(m.path)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.path {m.path!r}: expected a local transformers model directory with "
                "config.json and *.safetensors weights (nothing can be downloaded)"
            )
        if not list(path.glob("*.safetensors")):
            raise ConfigError(
                f"model.path {m.path!r}: no *.safetensors weights; reasonloop loads no pickled "
                "checkpoints (convert with `save_pretrained(..., safe_serialization=True)`)"
            )
    endpoints = []
    try:
        if m.backend == "openai":
            endpoints.append(("model", OpenAIModel.from_config(m)))
        if (evo := cfg.creator.llm_evolve).enabled:
            endpoints.append(("creator.llm_evolve", evolve_client(evo)))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name, client in endpoints:
        try:
            client.check_endpoint()
        except OpenAIBackendError as e:
            raise ConfigError(
                f"{name}.base_url {client.base_url!r}: {e} (is the server up? "
                "`reasonloop serve RUN_DIR` serves a trained model)"
            ) from None
        finally:
            client.close()
    if m.lora is not None and importlib.util.find_spec("peft") is None:
        raise ConfigError(
            "model.lora needs the `peft` package: pip install 'peft>=0.11' (or reasonloop[hf]), "
            "or remove model.lora"
        )
    return family, heldout


def run(
    cfg: RunConfig,
    out: str | Path,
    show_progress: bool = True,
    log=print,
    rollouts: Rollouts | None = None,
) -> dict[str, Any]:
    """Run (or resume) the loop in `out`; returns the summary (also written to summary.json).

    Generation runs where `cfg.cluster` says, or on `rollouts` when given (the caller keeps and
    closes them: their `stats()` tell which workers did the work).

    Under torchrun, rank 0 runs the loop and writes every file; the other ranks train each round
    alongside it (data parallel) and write nothing."""
    with distributed.process_group(cfg.model.device):
        if not distributed.is_main():
            return _follow(cfg, RunDir(out))
        summary = _run(cfg, out, show_progress, log, rollouts)
        distributed.send_order(("done", summary))
        return summary


def _follow(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    """A rank other than 0: at each of rank 0's train phases, read the round's records from the
    files rank 0 wrote (the run directory must be on a filesystem every rank sees), start from
    rank 0's weights and train its part of every batch. Returns rank 0's summary."""
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    model: LanguageModel | None = None
    while True:
        kind, payload = distributed.receive_order()
        if kind == "done":
            return payload
        r = payload
        if model is None:  # only its architecture matters: the weights come from rank 0
            model = build_model(cfg.model, cfg.seed)
        distributed.broadcast_module(model.module)
        rnd = _load_round(rd, r, {"phases": dict.fromkeys(("propose", "solve", "process"))})
        by_id = {t.id: t for t in rnd.tasks}
        _train(cfg, rd, r, rnd, by_id, model, cfg.seed_train if r == 0 else cfg.train, None)


def _run(
    cfg: RunConfig, out: str | Path, show_progress: bool, log, rollouts: Rollouts | None
) -> dict[str, Any]:
    family, heldout = _preflight(cfg)
    # Opened before the run directory is touched (a missing `ray` is a config error); a cluster
    # starts only when the first generation needs it.
    gen = rollouts if rollouts is not None else open_rollouts(cfg.cluster, cfg.model)
    rd = RunDir(out)
    rd.root.mkdir(parents=True, exist_ok=True)
    _check_config(rd, cfg)
    rd.clear_tmp()
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    heldout_path = rd.root / "heldout.parquet"
    try:
        # The held-out set is a pure function of the config; a damaged copy is simply re-made.
        if read_records(heldout_path, Task) != heldout:
            raise CorruptRunError(f"{heldout_path}: differs from the tasks its config makes")
    except (CorruptRunError, FileNotFoundError) as e:
        if heldout_path.exists():
            log(f"{e}; writing it again")
        write_records(heldout_path, heldout, Task)
    bar = Bar(show_progress and sys.stderr.isatty())
    manifest = rd.manifest() or {"rounds": {}}
    _check_files(rd, manifest, cfg.model, log)
    model: LanguageModel | None = None
    trackers = {
        n: t
        for n, t in zip(
            cfg.report_to,
            open_trackers(cfg.report_to, rd.root, cfg.model_dump(mode="json")),
            strict=True,
        )
    }
    try:
        for r in range(cfg.rounds + 1):
            state = manifest["rounds"].setdefault(str(r), {"phases": {}, "done": False})
            if state["done"]:
                model = None  # reloaded from the checkpoint when a later round needs it
            else:
                model = _run_round(r, cfg, rd, family, heldout, manifest, model, gen, bar, log)
            _track(rd, manifest, r, trackers)
    finally:
        for t in trackers.values():
            t.close()
        if rollouts is None:
            gen.close()
    summary = write_summary(rd, cfg, manifest)
    rd.clear_tmp()
    return summary


PHASE_FILES = {
    "propose": (("tasks.parquet", Task),),
    "solve": (("traces.parquet", Trace), ("judgements.parquet", Judgement)),
    "process": (
        ("decisions.parquet", Decision),
        ("sft.parquet", SFTExample),
        ("pairs.parquet", PreferencePair),
    ),
}


BACKWARD_TASKS = "backward_tasks.parquet"
BACKWARD_TRACES = "backward_traces.parquet"

OPTIONAL_FILES = {
    "propose": ("rejected_tasks.parquet",),
    "solve": (BACKWARD_TASKS, BACKWARD_TRACES),
    "process": (
        "corrections.parquet",
        "correction_judgements.parquet",
        "prm_labels.parquet",
        "prm.safetensors",
        SUMMARIES_FILE,
    ),
}
"""Files a phase writes only with some options on. Which ones it wrote is kept in its manifest
entry (`files`), so that a deleted one is noticed on start, not silently replaced by a fresh
model or an empty record set."""


def _check_written(path: Path) -> None:
    """An optional file the manifest says its phase wrote: present and readable."""
    if not path.is_file():
        raise CorruptRunError(f"{path}: missing (its phase wrote it)")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as e:  # safetensors raises its own error type for a damaged file
            raise CorruptRunError(f"{path}: damaged weights ({e})") from e
    else:
        try:
            pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise CorruptRunError(f"{path}: cannot read Parquet ({e})") from e


def _check_files(rd: RunDir, manifest: dict, model: ModelConfig, log) -> None:
    """Read back every finished phase's files. The first one missing or damaged (a disk fault, a
    file edited by hand) sends the run back to the last good state: that phase and everything
    after it, in its round and in later rounds, is redone; the message says which file."""
    rounds = manifest.get("rounds", {})
    for key in sorted(rounds, key=int):
        r, phases = int(key), rounds[key]["phases"]
        for i, phase in enumerate(PHASES):
            if phase not in phases:
                continue
            try:
                for name, cls in PHASE_FILES.get(phase, ()):
                    read_records(rd.round_dir(r) / name, cls)
                for name in phases[phase].get("files", ()):
                    _check_written(rd.round_dir(r) / name)
                if phase == "train":
                    check_checkpoint(rd.checkpoint(r), model)
                    for name in phases[phase].get("checkpoint_files", ()):
                        if not (rd.checkpoint(r) / name).is_file():
                            raise CorruptRunError(f"{rd.checkpoint(r) / name}: missing")
                if phase == "eval":
                    path = rd.round_dir(r) / "metrics.json"
                    try:
                        json.loads(path.read_text())
                    except (OSError, ValueError) as err:
                        raise CorruptRunError(f"{path}: unreadable ({err})") from err
            except (CorruptRunError, FileNotFoundError) as e:
                log(f"round {r}: {e}; redoing from its {phase} phase (last good state)")
                for later in PHASES[i:]:
                    phases.pop(later, None)
                rounds[key]["done"] = False
                for k in list(rounds):
                    if int(k) > r:
                        del rounds[k]
                rd.write_manifest(manifest)
                return


# What fixes a tiny checkpoint's tensors; the other model fields (threads, device) may change.
_ARCHITECTURE = ("dim", "n_layers", "n_heads", "ffn_hidden", "max_seq_len", "rope_theta", "abacus")


def check_checkpoint(path: Path, model: ModelConfig) -> None:
    """A checkpoint has its config and complete safetensors files (the header covers the file),
    and, for the tiny backend, the architecture the run's config asks for: a foreign checkpoint
    is refused, not overwritten, since it is not damage that redoing the round would repair."""
    if not (path / "config.json").exists():
        raise CorruptRunError(f"{path}: checkpoint missing")
    if model.backend == "tiny":
        try:
            saved = json.loads((path / "config.json").read_text())["model"]
            ModelConfig.model_validate(saved)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptRunError(f"{path / 'config.json'}: unreadable ({e})") from e
        want = model.model_dump()
        got = ModelConfig.model_validate(saved).model_dump()
        diffs = [
            f"{k} {got[k]} there, {want[k]} in the config"
            for k in _ARCHITECTURE
            if got[k] != want[k]
        ]
        if diffs:
            raise RunMismatchError(
                f"{path}: this checkpoint does not match the run's model config ({'; '.join(diffs)}); "
                "restore the run's own checkpoint or use another --out"
            )
    if model.lora is not None:
        from reasonloop.models.hf import ADAPTER_CONFIG, ADAPTER_WEIGHTS

        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            if not (path / name).is_file():
                raise CorruptRunError(f"{path / name}: missing (a LoRA checkpoint's adapter)")
    files = list(path.glob("*.safetensors"))
    if not files:
        raise CorruptRunError(f"{path}: no safetensors weights")
    for f in files:
        try:
            with safe_open(str(f), "pt"):
                pass
        except Exception as e:  # safetensors raises its own error type for a damaged file
            raise CorruptRunError(f"{f}: damaged weights ({e})") from e


def _load_round(rd: RunDir, r: int, state: dict) -> Round:
    rnd = Round(r)
    loaded = {
        name: read_records(rd.round_dir(r) / name, cls)
        for phase in PHASES
        if phase in state["phases"]
        for name, cls in PHASE_FILES.get(phase, ())
    }
    rnd.tasks = loaded.get("tasks.parquet", [])
    rnd.traces = loaded.get("traces.parquet", [])
    rnd.judgements = loaded.get("judgements.parquet", [])
    rnd.decisions = loaded.get("decisions.parquet", [])
    rnd.examples = loaded.get("sft.parquet", [])
    rnd.pairs = loaded.get("pairs.parquet", [])
    if "process" in state["phases"]:  # postprocess.correct's corrections join the round's records
        more, more_judgements = correction.read(rd.round_dir(r))
        rnd.traces, rnd.judgements = rnd.traces + more, rnd.judgements + more_judgements
    return rnd


def _clock() -> tuple[float, float]:
    """A phase's start: wall clock and this process's CPU time (all its threads)."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
    """A phase's `seconds` (wall) and `cpu_seconds` since `_clock()`: CPU time is the work
    done, whatever else the machine was running at the time."""
    return {
        "seconds": time.perf_counter() - start[0],
        "cpu_seconds": time.process_time() - start[1],
    }


def _mark(rd: RunDir, manifest: dict, r: int, phase: str, info: dict[str, Any]) -> None:
    # A resumed run must have the same config, so a redone phase writes the same optional files.
    written = [n for n in OPTIONAL_FILES.get(phase, ()) if (rd.round_dir(r) / n).exists()]
    if written:
        info = info | {"files": written}
    if phase == "train":  # the critic, ORM, PRM... beside the weights: each must stay there
        info = info | {"checkpoint_files": sorted(p.name for p in rd.checkpoint(r).iterdir())}
    manifest["rounds"][str(r)]["phases"][phase] = info
    rd.write_manifest(manifest)


# Figures of a train phase kept as they are in the manifest and in summary.json.
TRAIN_FIGURES = (
    "reward_mean",
    "groups",
    "groups_kept",
    "rows_skipped",
    "rl_inputs",
    "seed_checks",
    "seed_stalled",
    "stage_steps",
)


def _run_round(
    r: int,
    cfg: RunConfig,
    rd: RunDir,
    family: Family,
    heldout: list[Task],
    manifest: dict,
    model: LanguageModel | None,
    gen: Rollouts,
    bar: Bar,
    log,
) -> LanguageModel:
    state = manifest["rounds"][str(r)]
    phases = state["phases"]
    rnd = _load_round(rd, r, state)
    d = rd.round_dir(r)
    prev = manifest["rounds"].get(str(r - 1), {})
    label_free = not cfg.uses_gold_after_seed

    # -- propose ---------------------------------------------------------------------------
    if "propose" not in phases:
        t0 = _clock()
        rng = random.Random(phase_seed(cfg.seed, r, "propose"))
        exclude = {t.id for t in heldout}
        if r == 0:
            n_levels = len(cfg.tasks.seed_levels)
            frontier = max(cfg.tasks.seed_levels)
            tasks: list[Task] = []
            for i, lv in enumerate(cfg.tasks.seed_levels):
                n = cfg.tasks.seed_examples // n_levels + (i < cfg.tasks.seed_examples % n_levels)
                tasks += creator.propose(family, rng, n, [lv], [], cfg.creator, exclude, r)
            levels = list(cfg.tasks.seed_levels)
        extra: dict[str, Any] = {}
        rejects: list[RejectedTask] = []  # tasks the creator's checks dropped, with reasons
        if r > 0:
            frontier = prev["phases"]["eval"]["next_frontier"]
            # Self-play too: its proposer earns reward only where the solver sometimes succeeds.
            if cfg.creator.mode in ("adaptive", "self-play"):
                frontier, extra["curriculum"] = _adaptive_frontier(
                    cfg, family, manifest, r, frontier
                )
            levels = creator.frontier_levels(family, frontier, cfg.creator)
            below = [lv for lv in family.levels if lv < min(levels)]
            if cfg.creator.mode == "self-play":  # the model writes the round's tasks
                if model is None:
                    model = load_model(cfg.model, rd.checkpoint(r - 1))
                seed = phase_seed(cfg.seed, r, "propose")
                tasks, rejects, extra["self_play"] = self_play_tasks(
                    cfg, family, model, levels, exclude, rng, seed, r
                )
            else:
                tasks = creator.propose(
                    family, rng, cfg.creator.per_round, levels, below, cfg.creator, exclude, r
                )
            tasks, extra["evolution"] = _evolve_and_dedup(
                cfg, rd, family, tasks, levels, rng, r, exclude
            )
            if cfg.creator.llm_evolve.enabled:  # an LLM endpoint rewrites some of them
                seed = phase_seed(cfg.seed, r, "propose") + 2
                tasks, dropped, extra["llm_evolve"] = llm_evolve_stage(
                    cfg, family, tasks, exclude, seed, r
                )
                rejects += dropped
        if cfg.creator.reliability.enabled:
            if r > 0 and cfg.creator.reliability.samples and model is None:
                model = load_model(cfg.model, rd.checkpoint(r - 1))
            tasks, dropped, extra["reliability"] = reliability_stage(
                cfg, family, tasks, model if r > 0 else None, phase_seed(cfg.seed, r, "propose") + 1
            )
            rejects += dropped
        c = cfg.creator
        if c.mode == "self-play" or c.reliability.enabled or c.llm_evolve.enabled:
            write_rejections(d, rejects)
        prompts = [t.prompt for t in tasks]
        extra["diversity"] = {
            "distinct": distinct_share(prompts),
            "jaccard_distance": mean_jaccard_distance(prompts),
        }
        write_records(d / "tasks.parquet", tasks, Task)
        rnd.tasks = tasks
        _mark(
            rd,
            manifest,
            r,
            "propose",
            _since(t0) | {"frontier": frontier, "levels": levels} | extra,
        )
    by_id = {t.id: t for t in rnd.tasks}

    # The model this round starts from; loaded only if a phase still to run needs it.
    if model is None and not {"solve", "train"} <= phases.keys():
        model = (
            build_model(cfg.model, cfg.seed)
            if r == 0
            else load_model(cfg.model, rd.checkpoint(r - 1))
        )

    # -- solve + judge ---------------------------------------------------------------------
    if "solve" not in phases:
        t0 = _clock()
        gen_tokens = 0
        solve_info: dict[str, Any] = {}
        if r == 0:
            traces = reference_traces(family, rnd.tasks, r)
            judgements = judge_gold(family, by_id, traces, r)
        else:
            seed = phase_seed(cfg.seed, r, "solve")
            assert model is not None
            # The round samples from the previous round's weights (replicas get them once).
            gen.sync(model, str(rd.checkpoint(r - 1)))
            with bar(f"round {r} solve", len(rnd.tasks), "task") as pb:
                traces = solve(
                    gen,
                    family,
                    rnd.tasks,
                    cfg.reasoner,
                    seed,
                    f"reasoner:r{r - 1}",
                    r,
                    progress=_tick(pb),
                )
                gen_tokens += sum(t.n_tokens for t in traces)
            if cfg.evaluator.kind == "consensus":
                judgements = judge_consensus(traces, r, cfg.evaluator.min_vote_share)
            elif cfg.evaluator.kind == "forward-backward":
                fb = _forward_backward(cfg, gen, family, by_id, traces, seed, r, bar)
                judgements = fb.judgements
                gen_tokens += sum(t.n_tokens for t in fb.solutions)
                write_records(d / BACKWARD_TASKS, fb.questions, Task)
                write_records(d / BACKWARD_TRACES, fb.solutions, Trace)
                solve_info["forward_backward"] = fb.info
            elif cfg.evaluator.kind == "generative":
                # Self-rewarding: the model that sampled the round judges it; no gold is read.
                gv = cfg.evaluator.generative_verifier
                verifier = GenerativeVerifier(model, gv.with_critique)
                judgements = judge_generative(verifier, by_id, traces, r, gv.threshold)
            else:
                judgements = judge_gold(family, by_id, traces, r)
            if cfg.strategy.rationalize:
                ok = {j.trace_id for j in judgements if j.verdict}
                solved = {t.task_id for t in traces if t.id in ok}
                failed = [t for t in rnd.tasks if t.id not in solved and t.answer is not None]
                with bar(f"round {r} rationalise", len(failed), "task") as pb:
                    hinted = solve(
                        gen,
                        family,
                        failed,
                        cfg.reasoner,
                        seed + 1,
                        f"reasoner:r{r - 1}",
                        r,
                        hint=True,
                        progress=_tick(pb),
                    )
                gen_tokens += sum(t.n_tokens for t in hinted)
                traces += hinted
                # Rationales are checked against the gold answer they were shown.
                judgements += judge_gold(family, by_id, hinted, r)
        write_records(d / "traces.parquet", traces, Trace)
        write_records(d / "judgements.parquet", judgements, Judgement)
        rnd.traces, rnd.judgements = traces, judgements
        _mark(rd, manifest, r, "solve", _since(t0) | {"tokens": gen_tokens} | solve_info)

    # -- post-process and build the training set ------------------------------------------------
    if "process" not in phases:
        t0 = _clock()
        correction_info: dict[str, Any] = {}
        if correction.enabled(cfg, r):
            # Made by the model that sampled the round, then decided on like any trace.
            assert model is not None
            gen.sync(model, str(rd.checkpoint(r - 1)))
            seed_c = phase_seed(cfg.seed, r, "process")
            new, new_j = correction.correct_round(
                cfg, gen, family, by_id, rnd.traces, rnd.judgements, r, seed_c
            )
            correction.write(d, new, new_j)
            rnd.traces, rnd.judgements = rnd.traces + new, rnd.judgements + new_j
            correction_info = correction.stats(new, new_j)
        decisions = process(by_id, rnd.traces, rnd.judgements, cfg.postprocess, family, r)
        prm_info: dict[str, Any] = {}
        if r > 0 and cfg.evaluator.process_reward_model.enabled:
            # Labelled by the round's starting model, then the PRM filters what the Reasoner keeps.
            assert model is not None
            gen.sync(model, str(rd.checkpoint(r - 1)))
            decisions, prm_records, prm_info["prm"] = process_reward.label_train_filter(
                cfg,
                r,
                phase_seed(cfg.seed, r, "process") + 1,
                family,
                by_id,
                rnd.traces,
                rnd.judgements,
                decisions,
                model,
                gen,
                rd.checkpoint(r - 1) / PRM_FILE,
                d / PRM_FILE,
            )
            write_records(d / process_reward.LABELS_FILE, prm_records, Judgement)
        examples = sft_examples(by_id, rnd.traces, decisions, r)
        summary_info: dict[str, Any] = {}
        if cfg.postprocess.summarise:  # the kept traces' verified core becomes the training text
            summaries = summarise_kept(by_id, rnd.traces, rnd.judgements, decisions, family, r)
            write_records(d / SUMMARIES_FILE, summaries, Trace)
            examples = with_summaries(examples, summaries)
            dropped = Counter(why for x in summaries for _, why in x.decoding["dropped"])
            summary_info["summarised"] = {"traces": len(summaries), "steps_dropped": dropped}
        if r == 0:
            per_level = cfg.tasks.seed_examples // max(1, len(cfg.tasks.seed_levels))
            examples = balance_levels(examples, by_id, per_level)
            if cfg.strategy.rationalize:
                examples = with_hinted_copies(examples, by_id, 0.5)
            if cfg.tasks.seed_pack:
                rng = random.Random(phase_seed(cfg.seed, r, "process") + 1)
                examples = packed(examples, cfg.tasks.seed_pack, rng)
        # The generative verifier learns to judge from the same training set (one model).
        seed_p = phase_seed(cfg.seed, r, "process")
        verify = verifier_examples(cfg, family, by_id, rnd.traces, rnd.judgements, r, seed_p)
        examples += correction.training_examples(
            cfg, family, by_id, rnd.traces, rnd.judgements, r, seed_p
        )
        proposer_info: dict[str, Any] = {}
        if cfg.creator.mode == "self-play":  # the proposer trains beside the solver (RS-SFT)
            more, proposer_info["proposer"] = proposer_training(
                cfg, family, rnd.tasks, rnd.traces, rnd.judgements, r
            )
            examples = examples + more
        pairs: list[PreferencePair] = []
        if r > 0 and cfg.strategy.algorithm in PREFERENCE:
            rng = random.Random(phase_seed(cfg.seed, r, "process"))
            per_task = cfg.strategy.dpo.pairs_per_task
            if cfg.strategy.algorithm == "step-dpo":
                pairs = step_pairs(by_id, rnd.traces, rnd.judgements, family, r, per_task, rng)
            else:
                pairs = preference_pairs(by_id, rnd.traces, rnd.judgements, r, per_task, rng)
        examples, pairs = with_verification(cfg, r, examples, pairs, verify)
        write_records(d / "decisions.parquet", decisions, Decision)
        write_records(d / "sft.parquet", examples, SFTExample)
        write_records(d / "pairs.parquet", pairs, PreferencePair)
        rnd.decisions, rnd.examples, rnd.pairs = decisions, examples, pairs
        _mark(
            rd,
            manifest,
            r,
            "process",
            _since(t0)
            | _process_stats(rnd, family, by_id)
            | _judge_stats(cfg, family, by_id, rnd, len(verify))
            | prm_info
            | proposer_info
            | correction_info
            | summary_info,
        )

    # -- train -------------------------------------------------------------------------------
    if "train" not in phases:
        t0 = _clock()
        orm, orm_info = None, None
        if r > 0 and cfg.evaluator.reward_model.enabled:
            assert model is not None
            # From the policy that sampled the round, before it trains on the same traces.
            # Model-based RL: after round 1 the ORM is the (frozen) reward, not trained.
            orm, orm_info = (
                frozen_orm(rd, r, model)
                if orm_rewards_round(cfg, r)
                else _train_orm(cfg, rd, r, rnd, by_id, model)
            )
        bt_rm, bt_info = None, None
        if r > 0 and cfg.evaluator.pairwise_reward_model.enabled:
            assert model is not None
            bt_rm, bt_info = train_pairwise(
                cfg,
                rd.checkpoint(r - 1),
                r,
                by_id,
                rnd.traces,
                rnd.judgements,
                model,
                phase_seed(cfg.seed, r, "train"),
            )
        if r > 0 and cfg.strategy.retrain_from_base:
            model = load_model(cfg.model, rd.checkpoint(0))
        assert model is not None
        tcfg = cfg.seed_train if r == 0 else cfg.train
        # Under torchrun the other ranks train this round too (`_follow`), from these weights.
        distributed.send_order(("train", r))
        distributed.broadcast_module(model.module)
        # Epoch-based phases learn their step count from the data (None: a bar without a total).
        total = _seed_steps(cfg, tcfg) if r == 0 else tcfg.steps
        with bar(f"round {r} train", total, "step") as pb:
            if r == 0:
                stats = _seed_attempt(cfg, rd, rnd, by_id, model, tcfg, _step_tick(pb), log, 0)
            else:
                stats = _train(cfg, rd, r, rnd, by_id, model, tcfg, _step_tick(pb))
        if r == 0 and cfg.tasks.seed_check:
            stats = _check_seed(cfg, rd, rnd, by_id, family, model, tcfg, stats, bar, log)
        critic = stats.pop("critic", None)  # PPO's, when it carries over to the next round
        tmp = rd.tmp_dir() / "ckpt"
        model.save(tmp)
        if critic is not None:
            critic.save(tmp / CRITIC_FILE)
        if orm is not None:
            orm.save(tmp / ORM_FILE)
        if bt_rm is not None:
            bt_rm.save(tmp / BT_RM_FILE)
        if (d / PRM_FILE).exists():  # trained in the process phase; the next round carries it
            atomic_write_bytes(tmp / PRM_FILE, (d / PRM_FILE).read_bytes())
        atomic_replace_dir(tmp, rd.checkpoint(r))
        faults.hit("checkpoint")
        losses = stats.get("losses", [])
        info = {
            **_since(t0),
            "examples": stats["examples"],
            "steps": stats.get("steps", 0),
            "tokens": stats.get("tokens", 0),
            "tokens_per_s": stats.get("tokens_per_s", 0.0),
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "losses": [round(x, 5) for x in losses],
        }
        # Per-step curves of the preference and RL trainers (reward margin, KL, clipping).
        for key in ("margins", "accuracies", "kl", "clip_fraction", *PPO_CURVES):
            if key in stats:
                info[key] = [round(x, 5) for x in stats[key]]
        for key in TRAIN_FIGURES:
            if key in stats:
                info[key] = stats[key]
        if orm_info is not None:
            info["reward_model"] = orm_info
        if bt_info is not None:
            info["pairwise_reward_model"] = bt_info
        _mark(rd, manifest, r, "train", info)
    else:
        model = load_model(cfg.model, rd.checkpoint(r))

    # -- evaluate on the held-out set ----------------------------------------------------------
    if "eval" not in phases:
        t0 = _clock()
        gen.sync(model, str(rd.checkpoint(r)))
        orm_path = rd.checkpoint(r) / ORM_FILE
        # Read back from the checkpoint, so a run resumed before its eval scores the same ORM.
        orm_eval = (
            OutcomeRewardModel.load(orm_path, model)
            if cfg.evaluator.reward_model.enabled and orm_path.exists()
            else None
        )
        metrics = evaluate(
            gen,
            family,
            heldout,
            cfg.reasoner.max_new_tokens,
            cfg.heldout_samples,
            phase_seed(cfg.seed, r, "eval"),
            cfg.reasoner.batch_size,
            scorer=orm_eval.score if orm_eval is not None else None,
            scorers=eval_scorers(cfg, model, rd.checkpoint(r)),
            cut_has_no_answer=cfg.reasoner.cut_has_no_answer,
        )
        prm_path = rd.checkpoint(r) / PRM_FILE
        if cfg.evaluator.process_reward_model.enabled and prm_path.exists():
            prm_cal = process_reward.calibrate(
                cfg, prm_path, family, heldout, model, gen, phase_seed(cfg.seed, r, "eval")
            )
            prm_cost = phases["process"].get("prm", {})
            metrics.setdefault("calibration", {})["prm"] = prm_cal | {
                k: prm_cost[k] for k in ("labelling", "train", "dropped") if k in prm_cost
            }
        if cfg.postprocess.correct.mode != "none":
            metrics["correction"] = correction.heldout_metric(cfg, gen, family, heldout)
        # Inference-time search (`reasoner.search`): adds `<method>@<budget>` and its tokens.
        searched = search_metrics(
            cfg, family, heldout, model, gen, rd.checkpoint(r), phase_seed(cfg.seed, r, "eval") + 1
        )
        metrics["tokens"] = metrics.get("tokens", 0) + searched.pop("tokens", 0)
        metrics |= searched
        frontier = phases["propose"]["frontier"]
        success = phases["process"].get("success_at_frontier", 0.0)
        if r == 0:
            nxt = cfg.creator.start_level if cfg.creator.start_level is not None else frontier + 1
        else:
            nxt = creator.next_frontier(frontier, success, cfg.creator, family)
        info = {
            **_since(t0),
            "heldout": metrics,
            "next_frontier": nxt,
            "resources": resources(),
        }
        atomic_write_json(
            d / "metrics.json", _round_metrics(cfg, r, phases | {"eval": info}, label_free)
        )
        _mark(rd, manifest, r, "eval", info)
    state["done"] = True
    rd.write_manifest(manifest)
    log(_round_line(r, manifest["rounds"][str(r)]["phases"]))
    return model


def _adaptive_frontier(
    cfg: RunConfig, family: Family, manifest: dict, r: int, fallback: int
) -> tuple[int, dict[str, Any]]:
    """The level with the most learnable measured success (`tasks.curriculum`), from the
    sampled rounds so far (round 0's reference traces measure nothing about the model)."""
    least = cfg.creator.min_trials
    table = curriculum.success_table(
        {
            lv: cell
            for lv, cell in manifest["rounds"][str(q)]["phases"]["process"]
            .get("success_by_level", {})
            .items()
            if cell[1] >= least
        }
        for q in range(1, r)
    )
    top = cfg.creator.max_level if cfg.creator.max_level is not None else max(family.levels)
    allowed = [lv for lv in family.levels if lv <= top]
    level, why = curriculum.choose_level(allowed, table, cfg.creator.target_band, fallback)
    return level, {
        "level": level,
        "why": why,
        "success": {str(lv): round(ok / n, 4) for lv, (ok, n) in sorted(table.items())},
    }


def _evolve_and_dedup(
    cfg: RunConfig,
    rd: RunDir,
    family: Family,
    tasks: list[Task],
    levels: list[int],
    rng: random.Random,
    r: int,
    exclude: set[str],
) -> tuple[list[Task], dict[str, Any]]:
    """Replace `creator.evolve_share` of the tasks by tasks evolved from earlier rounds' (so
    each evolved task's parent is a stored record), then drop near-duplicates of this and
    earlier rounds' tasks. Tasks carry no drop record, so the counts go in the phase info."""
    c = cfg.creator
    info: dict[str, Any] = {}
    if c.evolve_share > 0:
        # Sources at the round's levels or one below (add_term lifts those into them), so the
        # evolved tasks follow the curriculum; the previous round's tasks when none are.
        earlier = [
            t for q in range(r) for t in read_records(rd.round_dir(q) / "tasks.parquet", Task)
        ]
        near = [t for t in earlier if min(levels) - 1 <= t.difficulty <= max(levels)]
        sources = near or [t for t in earlier if t.round == r - 1]
        n = int(round(len(tasks) * c.evolve_share))
        taken = exclude | {t.id for t in tasks}
        evolved, skipped = evolve.evolve(family, sources, n, c.evolve, rng, r, taken)
        tasks = tasks[: len(tasks) - len(evolved)] + evolved
        info["skipped"] = skipped
    if c.dedup_threshold is not None:
        earlier = [
            t.prompt
            for q in range(r)
            for t in read_records(rd.round_dir(q) / "tasks.parquet", Task)
        ]
        dropped = near_duplicates([t.prompt for t in tasks], earlier, c.dedup_threshold)
        tasks = [t for i, t in enumerate(tasks) if i not in dropped]
        reasons = Counter(why.split(" (")[0] for why in dropped.values())
        info["dropped_near_duplicates"] = dict(reasons)
    if c.evolve_share > 0:  # counted after dedup: what the round trains on
        info["evolved"] = dict(Counter(t.made_by for t in tasks if t.made_by.startswith("evolve:")))
    return tasks, info


def _forward_backward(
    cfg: RunConfig,
    gen: Rollouts,
    family: Family,
    tasks: dict[str, Task],
    traces: list[Trace],
    seed: int,
    r: int,
    bar: Bar,
) -> ForwardBackward:
    """The round's FOBAR judgements: the sampling model solves the backward questions of the
    most voted answers (`evaluator/forward_backward.py`)."""
    fb = cfg.evaluator.forward_backward
    rc = cfg.reasoner.model_copy(
        update={"samples": fb.samples, "temperature": fb.temperature, "greedy_sample": False}
    )

    def solve_backward(questions: list[Task]) -> list[Trace]:
        with bar(f"round {r} backward", len(questions), "question") as pb:
            return solve(
                gen, family, questions, rc, seed + 10, f"reasoner:r{r - 1}", r, progress=_tick(pb)
            )

    return judge_forward_backward(
        tasks,
        traces,
        family.backward,
        solve_backward,
        r,
        cfg.evaluator.min_vote_share,
        fb.alpha,
        fb.candidates,
        fb.questions,
        max_prompt_chars=2 * max((len(t.prompt) for t in tasks.values()), default=0) + 16,
    )


def _tick(pb: tqdm):
    start = time.perf_counter()
    tokens = 0

    def update(items: int, new_tokens: int) -> None:
        nonlocal tokens
        faults.hit("solve")
        tokens += new_tokens
        pb.update(items)
        pb.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f}")

    return update


def _step_tick(pb: tqdm):
    def update(s: dict) -> None:
        faults.hit("train")
        pb.update(1)
        pb.set_postfix(loss=f"{s.get('loss', 0):.3f}", tok_s=f"{s.get('tokens_per_s', 0):,.0f}")

    return update


def _process_stats(rnd: Round, family: Family, by_id: dict[str, Task]) -> dict[str, Any]:
    kept = {d.trace_id for d in rnd.decisions if d.kept}
    kept_tasks = {t.task_id for t in rnd.traces if t.id in kept}
    kept_traces = [t for t in rnd.traces if t.id in kept]
    levels = Counter(t.difficulty for t in rnd.tasks)
    top = max(levels) if levels else 0
    at_top = [t for t in rnd.tasks if t.difficulty == top]
    # Gold answers are read here only to *measure* how pure the kept labels are.
    right = [
        family.verify(by_id[t.task_id], t.answer) == 1.0
        for t in kept_traces
        if by_id[t.task_id].answer is not None
    ]
    # Per-sample success by level over the sampled (not hinted) traces: what the adaptive
    # curriculum reads. Round 0's reference traces are gold, so they say nothing of the model.
    verdicts = {j.trace_id: bool(j.verdict) for j in rnd.judgements}
    by_level: dict[str, list[int]] = {}
    for t in rnd.traces:
        if t.decoding.get("hint") or t.parent or t.task_id not in by_id or t.id not in verdicts:
            continue
        cell = by_level.setdefault(str(by_id[t.task_id].difficulty), [0, 0])
        cell[0] += verdicts[t.id]
        cell[1] += 1
    return {
        "success_by_level": dict(sorted(by_level.items(), key=lambda kv: int(kv[0]))),
        "tasks": len(rnd.tasks),
        "traces": len(rnd.traces),
        "kept": len(kept),
        "tasks_kept": len(kept_tasks),
        "dropped": dict(Counter(d.reason for d in rnd.decisions if not d.kept)),
        "success_at_frontier": (sum(t.id in kept_tasks for t in at_top) / len(at_top))
        if at_top
        else 0.0,
        "label_accuracy": (sum(right) / len(right)) if right else None,
        "examples": len(rnd.examples),
        "pairs": len(rnd.pairs),
    }


def _train(
    cfg: RunConfig,
    rd: RunDir,
    r: int,
    rnd: Round,
    by_id: dict[str, Task],
    model: LanguageModel,
    tcfg: TrainConfig,
    on_step,
) -> dict[str, Any]:
    """Train `model` in place with the round's method; stats include `examples`, the number of
    training items (SFT examples, preference pairs, or sampled completions)."""
    seed = phase_seed(cfg.seed, r, "train")
    algorithm = cfg.strategy.algorithm
    if r > 0 and algorithm in PREFERENCE:
        dpo = cfg.strategy.dpo
        pairs = list(rnd.pairs)
        if cfg.strategy.train_on == "union":
            for q in range(1, r):
                pairs = read_records(rd.round_dir(q) / "pairs.parquet", PreferencePair) + pairs
        reference = (
            model.copy() if dpo.reference == "round" else load_model(cfg.model, rd.checkpoint(0))
        )
        stats = train_dpo(
            model,
            reference,
            pairs,
            tcfg,
            seed,
            dpo.beta,
            dpo.loss_type,
            dpo.rpo_alpha,
            dpo.label_smoothing,
            on_step,
        )
        return stats | {"examples": len(pairs)}
    if r > 0 and algorithm in POLICY_GRADIENT:
        rl = cfg.strategy.rl
        # Stored rounds, ORM rewards, dense rewards: loop/rl_inputs.py (all off by default).
        first = correction.first_attempts(rnd.traces)
        inputs = policy_gradient_inputs(cfg, rd, r, by_id, first, rnd.judgements, model, seed)
        # postprocess.correct 'score': SCoRe's second-attempt groups join the first attempts'.
        groups = correction.with_second_attempts(
            cfg, by_id, rnd.traces, rnd.judgements, inputs.groups
        )
        reference = load_model(cfg.model, rd.checkpoint(0)) if rl.kl_beta else None
        stats = train_policy_gradient(
            model,
            groups,
            tcfg,
            rl,
            seed,
            algorithm,
            reference,
            cfg.reasoner.max_new_tokens,
            on_step,
            dense=inputs.dense,
            behaviour=inputs.behaviour,
        )
        examples = sum(len(g.completions) for g in groups)
        return stats | {"examples": examples, "rl_inputs": inputs.info}
    if r > 0 and algorithm == "ppo":
        ppo = cfg.strategy.ppo
        groups = groups_from_round(by_id, correction.first_attempts(rnd.traces), rnd.judgements)
        # The critic carries over in the previous checkpoint; the seed (round 0) has none.
        saved = rd.checkpoint(r - 1) / CRITIC_FILE
        carried = ppo.keep_critic and saved.exists()
        critic = Critic.load(saved, model) if carried else Critic.from_policy(model)
        reference = load_model(cfg.model, rd.checkpoint(0)) if ppo.kl_beta else None
        dense = None
        if cfg.strategy.rl.dense_reward != "none" and groups:
            w = cfg.strategy.rl.dense_weight
            rows, _ = dense_rewards(cfg, rd, r, groups, by_id, model, seed)
            dense = [[w * d for d in g] for g in rows]
        stats = train_ppo(model, critic, groups, tcfg, ppo, seed, reference, on_step, dense)
        examples = sum(len(g.completions) for g in groups)
        return stats | {"examples": examples, "critic": critic if ppo.keep_critic else None}
    data = _training_set(rd, cfg, r, rnd)
    if r == 0 and cfg.tasks.seed_first_levels:
        return _two_stage_seed(cfg, by_id, model, data, tcfg, seed, on_step)
    return train_sft(model, data, tcfg, seed, on_step=on_step) | {"examples": len(data)}


def _check_seed(
    cfg: RunConfig,
    rd: RunDir,
    rnd: Round,
    by_id: dict[str, Task],
    family: Family,
    model: LanguageModel,
    tcfg: TrainConfig,
    stats: dict[str, Any],
    bar: Bar,
    log,
) -> dict[str, Any]:
    """`tasks.seed_check`: greedy pass@1 of the trained seed on its own training tasks; below
    the bar, train again from fresh weights (init seed + 1, ...) and keep the best attempt.
    Some initial weights of the NoPE addition model never leave a plateau; another init does.
    Returns the kept attempt's training stats with `seed_checks`, every attempt's pass@1."""
    per_level: dict[int, list[Task]] = {}
    for t in rnd.tasks:
        if t.difficulty in cfg.tasks.seed_levels:
            per_level.setdefault(t.difficulty, [])
            if len(per_level[t.difficulty]) < 50:
                per_level[t.difficulty].append(t)
    probe = [t for lv in sorted(per_level) for t in per_level[lv]]
    checks = [evaluate(model, family, probe, cfg.reasoner.max_new_tokens)["pass@1"]]
    best_state: dict[str, torch.Tensor] | None = None
    best_stats = stats
    stalled = [0] if stats.get("stalled") else []
    for attempt in range(1, cfg.tasks.seed_restarts + 1):
        if checks[-1] >= cfg.tasks.seed_check and not stats.get("stalled"):
            break
        why = (
            f"stopped at step {stats['steps']} on its loss plateau"
            if stats.get("stalled")
            else f"pass@1 on its training tasks {checks[-1]:.2f} < seed_check "
            f"{cfg.tasks.seed_check}"
        )
        log(f"seed {why}: starting over from init seed {cfg.seed + attempt}")
        if checks[-1] >= max(checks[:-1], default=-1.0):  # the best so far: keep it
            best_state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
            best_stats = stats
        model.module.load_state_dict(build_model(cfg.model, cfg.seed + attempt).module.state_dict())
        distributed.send_order(("train", 0))  # under torchrun the other ranks train again too
        distributed.broadcast_module(model.module)
        with bar("round 0 train, again", _seed_steps(cfg, tcfg), "step") as pb:
            stats = _seed_attempt(cfg, rd, rnd, by_id, model, tcfg, _step_tick(pb), log, attempt)
        checks.append(evaluate(model, family, probe, cfg.reasoner.max_new_tokens)["pass@1"])
        if stats.get("stalled"):
            stalled.append(attempt)
    if best_state is not None and max(checks[:-1]) > checks[-1]:
        # The other ranks need not follow: every train order starts from rank 0's weights.
        model.module.load_state_dict(best_state)
        stats = best_stats
    if max(checks) < cfg.tasks.seed_check:
        log(
            f"warning: the seed reached pass@1 {max(checks):.2f} on its own training tasks "
            f"(seed_check {cfg.tasks.seed_check}) in {len(checks)} attempt(s); the rounds start "
            "from a seed that has not learned its levels"
        )
    return stats | {"seed_checks": checks} | ({"seed_stalled": stalled} if stalled else {})


def _seed_attempt(
    cfg: RunConfig,
    rd: RunDir,
    rnd: Round,
    by_id: dict[str, Task],
    model: LanguageModel,
    tcfg: TrainConfig,
    on_step,
    log,
    attempt: int,
) -> dict[str, Any]:
    """One seed attempt; with `tasks.seed_stall_steps` and a restart left, an attempt still on
    its loss plateau at that step stops there (`stalled` in its stats) and the caller starts
    over. Under torchrun the other ranks train the whole attempt in step, so no early stop."""
    at = cfg.tasks.seed_stall_steps
    total = _seed_steps(cfg, tcfg)
    if (
        not at
        or attempt >= cfg.tasks.seed_restarts
        or (total is not None and at >= total)
        or distributed.active()
    ):
        return _train(cfg, rd, 0, rnd, by_id, model, tcfg, on_step)
    watched = seed_stall.watch(on_step, at, cfg.tasks.seed_stall_drop)
    try:
        return _train(cfg, rd, 0, rnd, by_id, model, tcfg, watched)
    except seed_stall.SeedStalled as e:
        log(f"seed attempt {attempt + 1}: {e} ({cfg.tasks.seed_stall_drop:.0%})")
        return {
            "steps": e.step,
            "losses": e.losses,
            "examples": len(rnd.examples),
            "tokens": e.tokens,
            "stalled": True,
        }


def _seed_steps(cfg: RunConfig, tcfg: TrainConfig) -> int | None:
    """Optimiser steps of one seed attempt (both stages with `tasks.seed_first_levels`)."""
    if tcfg.steps is None or not cfg.tasks.seed_first_levels:
        return tcfg.steps
    return tcfg.steps + cfg.tasks.seed_first_steps


def _two_stage_seed(
    cfg: RunConfig,
    by_id: dict[str, Task],
    model: LanguageModel,
    data: list[SFTExample],
    tcfg: TrainConfig,
    seed: int,
    on_step,
) -> dict[str, Any]:
    """`tasks.seed_first_levels`: the easy levels alone first, then every seed level; the
    stats add up as one phase (losses of both stages, in order)."""
    first_levels = set(cfg.tasks.seed_first_levels)
    first = [
        ex for ex in data if ex.task_id in by_id and by_id[ex.task_id].difficulty in first_levels
    ]
    stage1 = tcfg.model_copy(update={"steps": cfg.tasks.seed_first_steps})
    a = train_sft(model, first, stage1, seed, on_step=on_step)
    b = train_sft(model, data, tcfg, seed + 1, on_step=on_step)
    seconds = a["seconds"] + b["seconds"]
    tokens = a["tokens"] + b["tokens"]
    return {
        "steps": a["steps"] + b["steps"],
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "loss_first": a["loss_first"],
        "loss_last": b["loss_last"],
        "losses": a["losses"] + b["losses"],
        "stage_steps": [a["steps"], b["steps"]],
        "examples": len(data),
    }


def _train_orm(
    cfg: RunConfig,
    rd: RunDir,
    r: int,
    rnd: Round,
    by_id: dict[str, Task],
    model: LanguageModel,
) -> tuple[OutcomeRewardModel, dict[str, Any]]:
    """The round's outcome reward model, trained on its judged traces (verdicts as labels)."""
    rm = cfg.evaluator.reward_model
    saved = rd.checkpoint(r - 1) / ORM_FILE
    carried = rm.carry and saved.exists()
    orm = (
        OutcomeRewardModel.load(saved, model) if carried else OutcomeRewardModel.from_policy(model)
    )
    verdict = {j.trace_id: bool(j.verdict) for j in rnd.judgements}
    # Hinted traces answer another prompt (the hint shows the answer): not what the ORM scores.
    use = [t for t in rnd.traces if t.id in verdict and not t.decoding.get("hint")]
    info = train_orm(
        orm,
        [by_id[t.task_id].prompt for t in use],
        [t.text for t in use],
        [verdict[t.id] for t in use],
        rm.train,
        phase_seed(cfg.seed, r, "train") + 1,
        rm.balance,
    )
    keys = ("n", "n_pos", "steps", "seconds", "loss_first", "loss_last", "train_accuracy")
    out = {k: info[k] for k in keys} | {"carried": carried}
    return orm, out | {"losses": [round(x, 5) for x in info["losses"]]}


def _judge_stats(
    cfg: RunConfig, family: Family, by_id: dict[str, Task], rnd: Round, n_verify: int
) -> dict[str, Any]:
    """With a generative verifier: how many verification examples the round added, and how
    often the round's verdicts agree with gold (its label accuracy; gold only measures)."""
    if not cfg.evaluator.generative_verifier.enabled:
        return {}
    return {
        "judge": {
            "evaluator": cfg.evaluator.kind,
            "verification_examples": n_verify,
            "accuracy": judge_accuracy(family, by_id, rnd.traces, rnd.judgements),
        }
    }


def _training_set(rd: RunDir, cfg: RunConfig, r: int, rnd: Round) -> list[SFTExample]:
    if r == 0:
        return rnd.examples
    data: list[SFTExample] = []
    if cfg.strategy.train_on == "union":
        for q in range(1, r):
            data += read_records(rd.round_dir(q) / "sft.parquet", SFTExample)
    data += rnd.examples
    if cfg.strategy.replay_seed:
        seed = read_records(rd.round_dir(0) / "sft.parquet", SFTExample)
        rng = random.Random(phase_seed(cfg.seed, r, "train"))
        data += rng.sample(seed, min(cfg.strategy.replay_seed, len(seed)))
    return data


STAGE_KEYS = {
    "propose": ("curriculum", "evolution", "self_play", "reliability", "llm_evolve"),
    "process": ("proposer",),
}
"""Per-round records of optional stages, copied into metrics.json only where the stage ran."""


def _round_metrics(
    cfg: RunConfig, r: int, phases: dict[str, dict], label_free: bool
) -> dict[str, Any]:
    solve_s = phases["solve"]["seconds"]
    gen_tokens = phases["solve"].get("tokens", 0) + phases["eval"]["heldout"].get("tokens", 0)
    gen_seconds = solve_s + phases["eval"]["seconds"]
    seconds = {p: round(phases[p]["seconds"], 3) for p in PHASES}
    seconds["total"] = round(sum(seconds.values()), 3)
    # CPU time, all of the process's threads (phases of runs made before it was kept count 0).
    cpu = {p: round(phases[p].get("cpu_seconds", 0.0), 3) for p in PHASES}
    cpu["total"] = round(sum(cpu.values()), 3)
    heldout = phases["eval"]["heldout"]
    extra: dict[str, Any] = {}
    if "calibration" in heldout:  # the evaluators' own section, not a held-out accuracy
        extra["calibration"] = heldout["calibration"]
    if "reward_model" in phases["train"]:
        extra["reward_model"] = {
            k: v for k, v in phases["train"]["reward_model"].items() if k != "losses"
        }
    if "pairwise_reward_model" in phases["train"]:
        extra["pairwise_reward_model"] = phases["train"]["pairwise_reward_model"]
    if "judge" in phases["process"]:  # the round's judge measured against gold
        extra["judge"] = phases["process"]["judge"]
    return extra | {
        "round": r,
        "heldout": {k: v for k, v in heldout.items() if k not in ("tokens", "calibration")},
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens_per_s": {
            "generation": gen_tokens / gen_seconds if gen_seconds > 0 and gen_tokens else 0.0,
            "training": phases["train"].get("tokens_per_s", 0.0),
        },
        "resources": phases["eval"].get("resources", {}),
        "frontier": phases["propose"]["frontier"],
        "levels": phases["propose"]["levels"],
        "next_frontier": phases["eval"]["next_frontier"],
        "diversity": phases["propose"].get("diversity"),
        # The Task Creator's optional stages: a key only where the stage ran.
        **{
            k: phases[phase][k]
            for phase, keys in STAGE_KEYS.items()
            for k in keys
            if phases[phase].get(k) is not None
        },
        "data": {
            k: phases["process"][k]
            for k in (
                "tasks",
                "traces",
                "kept",
                "tasks_kept",
                "dropped",
                "label_accuracy",
                "examples",
                "summarised",
            )
            if k in phases["process"]
        },
        "train": {
            k: phases["train"][k]
            for k in ("examples", "steps", "tokens", "loss_first", "loss_last", *TRAIN_FIGURES)
            if k in phases["train"]
        }
        | _last_of(phases["train"], ("margins", "accuracies", "kl", "clip_fraction", *PPO_CURVES)),
        "gold_labels_in_training": (r == 0 or not label_free) and gold_labels_in_training(cfg, r),
    }


def _last_of(train: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    """The final value of each per-step curve present, as `<name>_last`."""
    return {f"{k}_last": train[k][-1] for k in keys if train.get(k)}


def _round_line(r: int, phases: dict[str, dict]) -> str:
    h = phases["eval"]["heldout"]
    by = " ".join(f"L{k}:{v:.0%}" for k, v in h["by_level"].items())
    secs = sum(p["seconds"] for p in phases.values())
    return f"round {r}: held-out pass@1 {h['pass@1']:.1%} ({by}) kept {phases['process']['kept']}/{phases['process']['traces']} [{secs:.0f}s]"
