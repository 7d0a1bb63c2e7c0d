"""The run config: typed, documented, validated. YAML in, clear errors out.

Every field has a docstring and a default; presets (reasonloop/presets/*.yaml) are partial
configs merged over these defaults, and users copy them to make their own.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SELF_PLAY_FAMILIES = ("program", "addition")
"""Families whose tasks the learned proposer writes as programs (`tasks/proposer.py`)."""


class Section(BaseModel):
    """Unknown keys are errors: a typo in a config must not be silently ignored."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class LoRAConfig(Section):
    """LoRA adapters (hf backend, through `peft`): the model's own weights stay frozen and only
    low-rank adapters train (`models/hf.py`). Needs `pip install 'peft>=0.11'`.

    A checkpoint holds the base weights (transformers' files) and the adapter
    (`adapter_model.safetensors` + `adapter_config.json`) in one directory: `reasonloop` resumes,
    evaluates and serves it, and plain `AutoModelForCausalLM.from_pretrained` loads base and
    adapter together when `peft` is installed (without `peft` it silently loads the base alone;
    `HFModel.export_merged` writes a stand-alone merged copy)."""

    r: int = Field(8, gt=0)
    """Rank of each adapter."""
    alpha: int = Field(16, gt=0)
    """Scaling numerator: the adapter's update is multiplied by alpha / r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input (training only)."""
    target_modules: str | list[str] = "all-linear"
    """Which layers get an adapter: `all-linear` (every linear projection of the transformer
    blocks, never the output head: q/k/v/o and gate/up/down in a Llama-style block), or a list
    of module-name suffixes such as [q_proj, v_proj]."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train too: none, all of them, or those of the adapted layers."""
    merge_on_save: bool = False
    """False: the base weights are never touched (byte-identical in every checkpoint) and the
    adapter carries all the training. True: every save folds the adapter into the base weights
    (in memory too, so a resumed run continues from exactly what an uninterrupted one has) and
    restarts it from zero (its B matrices; A is kept), as ReLoRA does: each checkpoint's base
    weights are then the whole trained model, loadable without `peft`, and successive rounds
    add up to more than rank r. In bfloat16 each fold rounds the update into bf16 weights."""


class DistributedConfig(Section):
    """How the ranks of a torchrun job share a train phase (`distributed.py`, `fsdp.py`); no
    effect outside torchrun or on the weights trained (both give the single-process weights up
    to float rounding)."""

    strategy: Literal["allreduce", "fsdp"] = "allreduce"
    """`allreduce`: every rank holds the whole model, its gradients and AdamW's state, and the
    gradients are summed after each backward. `fsdp` (hf backend): during a train phase each
    rank holds 1/world of the parameters, gradients and AdamW's state (PyTorch FSDP2,
    `fully_shard`, one unit per decoder layer); the full weights are gathered back at the end of
    the phase for generation and saving. PPO's critic stays whole on every rank."""


class ModelConfig(Section):
    """Which model plays the modules, and its shape when it is built from scratch."""

    backend: Literal["tiny", "hf", "openai"] = "tiny"
    """`tiny`: the built-in character-level transformer; `hf`: any transformers causal LM;
    `openai`: generation only, from an OpenAI-compatible server (`base_url`, `model_name`), such
    as `reasonloop serve` or vLLM; it cannot train or score (`models/openai.py`)."""
    dim: int = Field(128, gt=0)
    """Hidden size (tiny backend)."""
    n_layers: int = Field(4, gt=0)
    """Transformer blocks (tiny backend)."""
    n_heads: int = Field(4, gt=0)
    """Attention heads; `dim` must be divisible by it (tiny backend)."""
    ffn_hidden: int = Field(0, ge=0)
    """SwiGLU hidden size; 0 picks a multiple of 32 near 8/3 * dim (tiny backend)."""
    max_seq_len: int = Field(256, gt=0)
    """Longest prompt + completion in tokens (tiny backend)."""
    rope_theta: float = Field(10000.0, gt=0)
    """RoPE base; `.inf` turns rotary embeddings off (NoPE), which `transformers` loads too."""
    abacus: int = Field(0, ge=0)
    """Abacus digit-position embeddings (McLeish et al. 2024), tiny backend: 0 = off; N > 0 adds
    to each digit an embedding of its index within its run of digits (1 for a number's first
    digit written, 2 for the next...), capped at N. Lets attention line up the digits of equal
    significance in operands and answer at lengths never trained (with reversed numbers)."""
    abacus_offset: int = Field(0, ge=0)
    """Training only: every sequence's digit indices are shifted by a random 0..abacus_offset,
    so the embeddings of indices longer than any training number are trained too."""
    abacus_offset_per_problem: bool = False
    """Training only, with `abacus_offset`: each problem of a sequence (a newline closes one)
    draws its own offset instead of one per sequence. Needed by a packed seed
    (`tasks.seed_pack`): the second problem's indices then sit up to `abacus_offset` away from
    the first's, so learned indices meet at distances one seed problem never spans."""
    abacus_anchor: str = ""
    """One character that opens a digit run of its own (index 1), so the digits right after it
    count on from 2 ("" = off). With `=` and reversed addition, the token at which answer digit
    j is predicted (`=` for j = 0, else answer digit j - 1) has index j + 1, the index of the
    operand digits it sums: attention matches equal indices instead of learning a shift by one.
    Measured: the default seed learned 1-5 digits in 4000 steps with it and stayed at 10% on
    this machine without it (docs/easy-to-hard.md)."""
    abacus_fixed: float = Field(0.0, ge=0)
    """0: the abacus embeddings are learned. s > 0: they are fixed orthogonal vectors of norm s,
    never trained (needs `abacus` < `dim`). Learned ones alias: seeded on 1-5 digits (indices at
    most 6 apart in one sequence), index i and i + 7 or i + 8 came out with cosine .7-.9, so at 7
    digits the `=` matched the operands' 8th digits almost as well as their 1st and the low
    answer digits went wrong (docs/easy-to-hard.md, sixth series). Orthogonal indices cannot
    alias at any distance."""
    path: str | None = None
    """hf backend: a local model directory (nothing can be downloaded at run time)."""
    hf_config: dict | None = None
    """hf backend: build a fresh model from this `transformers` config dict instead of `path`."""
    lora: LoRAConfig | None = None
    """hf backend: train LoRA adapters instead of every weight (`{}` takes the defaults; see
    `LoRAConfig`); None trains the full model. A `path` that holds a LoRA checkpoint continues
    its adapter when this is set, and is merged into full weights when it is not."""
    gradient_checkpointing: bool = False
    """hf backend: recompute each block's activations during backward instead of keeping them
    (transformers' `gradient_checkpointing_enable`, non-reentrant): the same gradients for less
    memory and about a third more compute per training step."""
    chat_template: bool = False
    """hf backend: send every prompt through the tokenizer's chat template as one user message
    (generation, scoring and training alike; the tokenizer must have a template). Off by default:
    the task families' prompts are raw text (the character tokenizer has no template)."""
    base_url: str | None = None
    """openai backend: the API root, e.g. `http://127.0.0.1:8000/v1` (required)."""
    model_name: str | None = None
    """openai backend: the `model` each request names (required; `GET /v1/models` lists them)."""
    api_key_env: str | None = None
    """openai backend: the NAME of the environment variable that holds the API key (never the key
    itself: it stays out of configs, logs and run records); None sends no key."""
    api: Literal["completions", "chat"] = "completions"
    """openai backend: `completions` sends each prompt as is; `chat` sends it as one user
    message (for chat-only models)."""
    max_concurrency: int = Field(8, gt=0)
    """openai backend: requests in flight at once."""
    timeout_s: float = Field(60.0, gt=0)
    """openai backend: seconds to wait for a connection and for each response."""
    retries: int = Field(4, ge=0)
    """openai backend: retries of a request that failed with 429, 5xx, a lost connection or a
    timeout, with exponential backoff and jitter."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """hf backend: the weights' dtype (the tiny backend is float32 only). There is no autocast:
    forwards run in this dtype, while losses and log-probabilities are computed from float32
    logits. bfloat16 halves the memory and runs on CPU too (fast only where the CPU has bf16
    instructions); LoRA adapters stay float32 over a bf16 base, but full fine-tuning keeps
    AdamW's state and updates in bf16, where small updates round away: prefer float32 (or LoRA)
    for full fine-tuning. float16 has no loss scaling here: for inference on GPUs."""
    decode_dtype: Literal["float32", "bfloat16"] = "float32"
    """tiny backend: the dtype generation runs in (training and `logprobs` always run in
    float32). bfloat16 decodes with a bf16 copy of the weights made at each `generate` call and
    a bf16 KV cache, while the residual stream, norms, softmax and sampling stay float32: about
    2x the tokens/s on CPUs with bf16 instructions (AVX512-BF16, AMX), where the matrix products
    run at twice the float32 rate and the cache is half the bytes to stream. Samples then come
    from a slightly different distribution than the float32 model's: `Completion.logprob` is
    the bf16 model's, and `token_logprobs` is left empty so that policy-gradient training
    scores rollouts afresh in float32."""
    device: str = "cpu"
    threads: int = Field(0, ge=0)
    """torch intra-op threads; 0 keeps torch's default (all cores)."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Under torchrun: whole replicas (`allreduce`) or sharded training (`fsdp`, hf backend)."""

    @field_validator("rope_theta")
    @classmethod
    def _theta(cls, v: float) -> float:
        if math.isnan(v):
            raise ValueError("rope_theta must be a positive number or .inf (NoPE)")
        return v

    @model_validator(mode="after")
    def _openai(self) -> ModelConfig:
        if self.backend == "openai" and not (self.base_url and self.model_name):
            raise ValueError(
                "backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1) and model_name"
            )
        return self

    @model_validator(mode="after")
    def _hf_only(self) -> ModelConfig:
        for name in ("lora", "gradient_checkpointing", "chat_template"):
            if getattr(self, name) not in (None, False) and self.backend != "hf":
                raise ValueError(
                    f"model.{name} is an hf-backend option; backend {self.backend!r} cannot use "
                    f"it (remove model.{name}, or set model.backend: hf)"
                )
        if self.chat_template and self.hf_config is not None:
            raise ValueError(
                "model.chat_template: a model built from hf_config has the character tokenizer, "
                "which has no chat template (use a model.path whose tokenizer has one)"
            )
        return self

    @model_validator(mode="after")
    def _fsdp(self) -> ModelConfig:
        if self.distributed.strategy == "fsdp" and self.backend != "hf":
            raise ValueError(
                f"model.distributed.strategy 'fsdp' shards an hf-backend model; backend "
                f"{self.backend!r} trains with strategy 'allreduce'"
            )
        return self

    @model_validator(mode="after")
    def _abacus(self) -> ModelConfig:
        if self.abacus and self.backend != "tiny":
            raise ValueError(
                f"abacus ({self.abacus}) is a tiny-backend option; backend {self.backend!r} needs abacus: 0"
            )
        if self.abacus_offset and self.abacus_offset >= self.abacus:
            raise ValueError(
                f"abacus_offset ({self.abacus_offset}) must be below abacus ({self.abacus}): "
                "shifted indices past abacus are all capped to one embedding"
            )
        if self.abacus_anchor:
            from reasonloop.models.tokenizer import CHARS  # here: the models package imports config

            if len(self.abacus_anchor) != 1 or self.abacus_anchor.isdigit():
                raise ValueError(
                    "abacus_anchor must be one non-digit character or empty, "
                    f"got {self.abacus_anchor!r}"
                )
            if self.abacus_anchor not in CHARS:
                raise ValueError(
                    f"abacus_anchor {self.abacus_anchor!r} is not in the tiny tokenizer's characters"
                )
            if not self.abacus:
                raise ValueError(
                    f"abacus_anchor ({self.abacus_anchor!r}) needs abacus > 0: without the "
                    "embedding there is no digit index to anchor"
                )
        if self.abacus_fixed and not 0 < self.abacus < self.dim:
            raise ValueError(
                f"abacus_fixed needs 0 < abacus ({self.abacus}) < dim ({self.dim}): "
                "there must be one orthogonal direction per digit index"
            )
        return self


class TrainConfig(Section):
    """One training phase: AdamW with linear warmup and cosine decay, gradient clipping."""

    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a share of `lr` (end of the cosine)."""
    warmup_steps: int = Field(20, ge=0)
    epochs: float = Field(1.0, gt=0)
    """Passes over the phase's examples; ignored when `steps` is set."""
    steps: int | None = Field(None, gt=0)
    """Optimiser steps for the phase; overrides `epochs`."""
    batch_size: int = Field(64, gt=0)
    """Sequences per optimiser step."""
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, gt=0)
    """Clip the global gradient norm to this value."""
    bucket_by_length: bool = True
    """Group sequences of similar length into a batch (less padding, faster steps)."""


class TasksConfig(Section):
    """Where tasks come from, what the seed supervises, and the fixed held-out set."""

    family: str = "addition"
    """A family name (`reasonloop presets` lists them), `gym:<dataset>` or `file:<path>`."""
    options: dict = Field(default_factory=dict)
    """Keyword options passed to the family (format switches, number ranges...)."""
    seed_levels: list[int] = Field(default_factory=lambda: [1, 2, 3])
    """Difficulty levels with gold supervision in round 0 (the seed)."""
    seed_examples: int = Field(4000, ge=0)
    """Reference traces the seed trains on, spread evenly over `seed_levels`. A level with
    fewer distinct tasks (1-digit addition has 100) repeats them so every level weighs the same."""
    seed_first_levels: list[int] = Field(default_factory=list)
    """A curriculum inside the seed: round 0 first trains `seed_first_steps` steps on the seed
    examples of these levels alone (a subset of `seed_levels`), then `seed_train.steps` on all
    of them, each stage with `seed_train`'s warmup and cosine. Empty: one stage. The NoPE
    addition model that stalls on 1-5 digits from some initial weights learns them when it
    first masters 1-3 (docs/easy-to-hard.md)."""
    seed_first_steps: int = Field(0, ge=0)
    """Optimiser steps of the first seed stage (with `seed_first_levels`)."""
    seed_pack: float = Field(0.0, ge=0.0, le=1.0)
    """Share of the seed's gold examples written after another seed problem in the same training
    sequence (loss on the second answer only; `algorithms/seed_packing.py`). With
    `model.abacus_offset_per_problem` the learned abacus indices then meet further apart than one
    problem spans, which keeps them from aliasing 7-8 apart (docs/easy-to-hard.md). 0: off."""
    seed_check: float = Field(0.0, ge=0.0, le=1.0)
    """Round 0 ends with a greedy pass@1 on up to 50 training tasks of each seed level; below
    this share the seed starts over from fresh weights (init seed + 1, + 2, ...), up to
    `seed_restarts` times, and the run keeps the best attempt. 0: no check. Training tasks, not
    held-out ones: the check asks whether the seed fitted what it was shown. A model loaded from
    `model.path` starts over from the same weights, so restarts help models built from a config."""
    seed_restarts: int = Field(0, ge=0)
    """How many times `seed_check` may start the seed over."""
    seed_stall_steps: int = Field(0, ge=0)
    """With `seed_restarts`: at this step a seed attempt whose training loss has not left its
    early plateau stops and starts over at once, instead of training to the end and then
    missing `seed_check` (`loop/seed_stall.py`: the mean loss of the last quarter of these
    steps is not `seed_stall_drop` below that of the second quarter). The last attempt always
    trains to the end. Off under torchrun. 0: off."""
    seed_stall_drop: float = Field(0.2, gt=0.0, lt=1.0)
    """The share by which the loss must have fallen at `seed_stall_steps`."""
    heldout_levels: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    """Levels of the held-out set, evaluated every round and never trained on."""
    heldout_per_level: int = Field(100, gt=0)
    heldout_seed: int = 12345
    """Seed of the held-out set, independent of the run seed so runs share one yardstick."""

    @model_validator(mode="after")
    def _seed_stages(self) -> TasksConfig:
        extra = sorted(set(self.seed_first_levels) - set(self.seed_levels))
        if extra:
            raise ValueError(
                f"seed_first_levels {self.seed_first_levels} must be among seed_levels "
                f"{self.seed_levels}; not: {extra}"
            )
        if self.seed_stall_steps and not self.seed_restarts:
            raise ValueError(
                f"seed_stall_steps ({self.seed_stall_steps}) needs seed_restarts > 0: a stalled "
                "seed starts over, and without restarts it cannot"
            )
        if 0 < self.seed_stall_steps < 4:
            raise ValueError(
                f"seed_stall_steps must be 0 (off) or at least 4, got {self.seed_stall_steps}"
            )
        if self.seed_restarts and not self.seed_check:
            raise ValueError(
                f"seed_restarts ({self.seed_restarts}) needs seed_check > 0: without a check "
                "there is nothing to restart on"
            )
        if bool(self.seed_first_levels) != bool(self.seed_first_steps):
            raise ValueError(
                f"seed_first_levels ({self.seed_first_levels}) and seed_first_steps "
                f"({self.seed_first_steps}) go together: set both or neither"
            )
        return self


class ReliabilityConfig(Section):
    """Checks a proposed task passes before the Reasoner trains on it
    (`tasks/reliability.py`); each rejection is recorded with its reason in the round's
    `rejected_tasks.parquet` and counted in the propose phase's info."""

    enabled: bool = False
    """Run the checks on every round's proposed tasks (round 0 included)."""
    execution_check: bool = True
    """Program tasks: re-run the program in the sandbox and reject when its value differs from
    the stated answer or the run fails."""
    scorer: Literal["none", "rule"] = "rule"
    """Task-quality scorer: `rule` (well-formed prompt and answer, no leaked answer) or none."""
    min_score: float = Field(1.0, ge=0, le=1)
    """Tasks the scorer rates below this are rejected (`low_score`)."""
    samples: int = Field(0, ge=0)
    """Solutions sampled per task from the current model (rounds after 0); 0: no sampled check."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of the sampled check."""
    dispute_share: float = Field(0.75, gt=0, le=1)
    """When this share of samples agrees on another answer than the gold, the gold is
    re-derived; a gold that fails the re-derivation is rejected (`gold_disputed`)."""
    min_agreement: float | None = Field(None, gt=0, le=1)
    """Reject tasks whose most common sampled answer has a smaller share (`ambiguous`); None:
    off (hard tasks the model fails in scattered ways are kept)."""


class ProposerConfig(Section):
    """The learned proposer of `creator.mode: self-play` (`tasks/proposer.py`, Absolute Zero):
    the model writes programs from `?L<level>:` prompts, the sandbox runs them for the gold
    answer, the solver attempts them, and the proposals with a positive learnability reward
    (1 - solve rate when 0 < solve rate < 1, else 0) are trained on by rejection-sampling SFT."""

    proposals: int = Field(256, gt=0)
    """Programs sampled per round (before the checks); the round keeps at most
    `creator.per_round` verified, distinct ones."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of the proposals."""
    max_new_tokens: int = Field(48, gt=0)
    """Longest proposal, in tokens."""
    min_tasks: int = Field(16, ge=0)
    """When fewer proposals verify, the round is topped up with generator tasks at the frontier
    (counted as `filled`), so the solver always has work."""
    min_reward: float = Field(0.0, ge=0, lt=1)
    """Proposals whose learnability reward exceeds this become proposer training examples."""
    seed_examples: int = Field(1000, ge=0)
    """Round 0: proposer examples (`?L<level>:` -> program) from the generator at every level up
    to `creator.max_level` (else the hardest held-out one), teaching the format."""


class LLMEvolveConfig(Section):
    """LLM-driven evolution operators (`tasks/llm_evolve.py`: Evol-Instruct's add_constraints,
    deepen, concretise, increase_reasoning, complicate_input; MetaMath's rephrase, backward)
    through an OpenAI-compatible endpoint. Each round after 0 adds up to `share * per_round`
    evolved tasks made from the round's tasks; a candidate is kept only when it parses,
    validates and its answer is verified (sandbox for programs, two agreeing LLM answers for
    text tasks); rejections go to `rejected_tasks.parquet` with their reason."""

    enabled: bool = False
    base_url: str | None = None
    """The endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, `reasonloop serve`)."""
    model_name: str | None = None
    """The `model` each request names; also written into `made_by` (`llm-evolve:<op>@<model>`)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself)."""
    api: Literal["completions", "chat"] = "completions"
    """Which endpoint: /completions (raw prompt) or /chat/completions (one user message)."""
    operators: list[str] = Field(
        default_factory=lambda: [
            "add_constraints",
            "deepen",
            "concretise",
            "increase_reasoning",
            "complicate_input",
            "rephrase",
            "backward",
        ]
    )
    """Operators drawn from, uniformly, one per candidate."""
    share: float = Field(0.25, gt=0, le=1)
    """Candidates per round, as a share of `creator.per_round`."""
    temperature: float = Field(0.7, ge=0)
    max_new_tokens: int = Field(256, gt=0)
    max_chars: int = Field(600, gt=0)
    """Evolved questions longer than this are rejected (`too_long`); keep it within the
    solver's context (`model.max_seq_len` for the tiny backend)."""
    ascii_only: bool = True
    """Reject evolved questions with characters outside printable ASCII (`bad_charset`): the
    tiny backend reads nothing else."""
    timeout_s: float = Field(60.0, gt=0)
    """Per request, as `model.timeout_s`."""

    @model_validator(mode="after")
    def _llm_evolve(self) -> LLMEvolveConfig:
        from reasonloop.tasks.llm_evolve import OPERATORS

        if unknown := [o for o in self.operators if o not in OPERATORS]:
            raise ValueError(
                f"creator.llm_evolve.operators: unknown {unknown}; known: {sorted(OPERATORS)}"
            )
        if self.enabled and not (self.base_url and self.model_name):
            raise ValueError(
                "creator.llm_evolve.enabled needs base_url (e.g. http://127.0.0.1:8000/v1) and "
                "model_name"
            )
        if self.enabled and not self.operators:
            raise ValueError("creator.llm_evolve.operators: empty; name at least one operator")
        return self


class CreatorConfig(Section):
    """The Task Creator: proposes each round's tasks and moves the difficulty frontier."""

    per_round: int = Field(1000, gt=0)
    """Tasks proposed per round."""
    start_level: int | None = None
    """First frontier level; default: one above the highest seed level."""
    levels_ahead: int = Field(1, ge=1)
    """Tasks are drawn uniformly from `frontier .. frontier + levels_ahead - 1`."""
    review_share: float = Field(0.0, ge=0, le=1)
    """Share of tasks drawn from levels below the frontier (rehearsal of mastered levels)."""
    mastery: float = Field(0.5, ge=0, le=1)
    """The frontier moves up when the Reasoner's success (kept share) at it reaches this."""
    step: int = Field(1, ge=0)
    """Levels the frontier moves when mastered."""
    max_level: int | None = None
    """Cap on the frontier; default: the family's hardest level."""
    mode: Literal["frontier", "adaptive", "self-play"] = "frontier"
    """`frontier`: move up a level once the frontier is mastered; `adaptive`: each round pick
    the level whose measured success p (training tasks, last round that drew it) lies in
    `target_band` with the highest learnability p(1-p), and go up a level when none does;
    `self-play`: after round 0 the model itself proposes the tasks (`proposer`; needs
    `tasks.family: program` or `addition`), asked at the level adaptive would pick and the
    `levels_ahead - 1` above it."""
    target_band: tuple[float, float] = (0.2, 0.8)
    """adaptive, self-play: the success rates worth training at (below: too hard, above:
    mastered)."""
    min_trials: int = Field(1, ge=1)
    """adaptive, self-play: a round's success at a level counts only when measured on at least
    this many samples. Self-play measures every operation count its proposals happen to have,
    and the 8 samples of two stray 2-operation programs (p = 0.5) once pulled the next round's
    level below the solver's (measured)."""
    evolve: list[str] = Field(default_factory=list)
    """Evolution operators (`reasonloop.tasks.evolve`) applied to a share of each round's
    tasks: change_numbers, add_term, structured_input, rephrase."""
    evolve_share: float = Field(0.0, ge=0, le=1)
    """Share of each round's tasks (after round 0) replaced by evolved ones."""
    dedup_threshold: float | None = Field(None, gt=0, le=1)
    """Drop proposed tasks whose character-3-gram Jaccard similarity to a task of this or an
    earlier round exceeds this; None: keep all distinct tasks."""
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
    """Reliability checks on proposed tasks (off by default)."""
    proposer: ProposerConfig = Field(default_factory=ProposerConfig)
    """The learned proposer (used only with `mode: self-play`)."""
    llm_evolve: LLMEvolveConfig = Field(default_factory=LLMEvolveConfig)
    """LLM-driven evolution through an OpenAI-compatible endpoint (off by default)."""

    @model_validator(mode="after")
    def _creator(self) -> CreatorConfig:
        lo, hi = self.target_band
        if not 0 <= lo < hi <= 1:
            raise ValueError(
                f"creator.target_band must be [low, high] with 0 <= low < high <= 1, "
                f"got {list(self.target_band)}"
            )
        from reasonloop.tasks.evolve import OPERATORS  # the operators import families

        if unknown := [o for o in self.evolve if o not in OPERATORS]:
            raise ValueError(
                f"creator.evolve: unknown operators {unknown}; known: {sorted(OPERATORS)}"
            )
        if self.evolve_share > 0 and not self.evolve:
            raise ValueError("creator.evolve_share > 0 needs operators in creator.evolve")
        return self


class SearchConfig(Section):
    """Inference-time search measured on the held-out set (`loop/heldout_search.py`): each
    round's eval adds `<method>@<budget>` (accuracy of the searched answer, overall and by level)
    next to pass@1 and maj@k. `sample` (the default) adds nothing. The search's tokens count in
    the eval's `tokens`."""

    method: Literal["sample", "best_of_n", "weighted_vote", "beam", "mcts"] = "sample"
    """`best_of_n` / `weighted_vote`: `budget` full samples selected by the scorer
    (`reasoner/search.py`); `beam`: step-level beam search (`reasoner/beam_search.py`); `mcts`:
    MCTS over steps with PUCT (`reasoner/mcts.py`); `sample`: no search metric."""
    budget: int = Field(16, ge=1)
    """Per task, in full samples' worth: best_of_n / weighted_vote draw this many samples; beam
    draws `beam_width * expansions` (which must equal it) step samples a round; mcts stops once it
    has generated `budget` times the tokens of the task's greedy solution."""
    scorer: Literal["orm", "prm", "check_step"] = "orm"
    """What guides the search: `orm` (the round's `evaluator.reward_model`, a step prefix scored
    as an outcome), `prm` (the round's `evaluator.process_reward_model`, per step), or
    `check_step` (the family's own step check plus the gold answer: an oracle, so its metric is an
    upper bound, not a label-free figure). A round whose learned scorer has no checkpoint yet
    (round 0) gets no search metric."""
    aggregate: Literal["min", "mean", "last", "product"] = "min"
    """How a trace's step scores become one score (ranking beams, node values, best_of_n)."""
    beam_width: int = Field(4, ge=1)
    """beam: partial solutions kept per task."""
    expansions: int = Field(4, ge=1)
    """beam, mcts: next steps sampled from each beam or expanded node."""
    max_steps: int = Field(16, ge=1)
    """beam, mcts: the longest solution searched, in steps."""
    simulations: int = Field(256, ge=1)
    """mcts: simulations per task at most (the token budget usually ends it first)."""
    c_puct: float = Field(1.0, ge=0)
    """mcts: exploration weight of the PUCT rule."""
    prior: Literal["uniform", "probability"] = "uniform"
    """mcts: prior of a child: uniform, or its sampling probability renormalised."""
    value: Literal["step", "rollout"] = "step"
    """mcts: a node's value is the scorer's aggregate of its steps, or the outcome score of one
    rollout from it to the end (its tokens count in the budget)."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of the search's samples."""

    @model_validator(mode="after")
    def _search(self) -> SearchConfig:
        if self.method == "beam" and self.beam_width * self.expansions != self.budget:
            raise ValueError(
                f"reasoner.search.beam_width * reasoner.search.expansions must equal "
                f"reasoner.search.budget for method beam (the step samples of a round, about "
                f"budget full samples' worth of tokens), got {self.beam_width} * "
                f"{self.expansions} != {self.budget}"
            )
        return self


class ReasonerConfig(Section):
    """How the Reasoner samples its solutions during a round."""

    samples: int = Field(4, ge=1)
    """Solutions sampled per task (k)."""
    temperature: float = Field(0.7, ge=0)
    """0 means greedy (then one sample is enough)."""
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(512, gt=0)
    """Prompts x samples decoded together in one batch."""
    greedy_sample: bool = True
    """Make the first of the k samples greedy (Lee et al. label with greedy decoding)."""
    cut_has_no_answer: bool = True
    """A sample that ran out of `max_new_tokens` before it stopped is unfinished: its trace gets
    no final answer (it does not vote and is never judged right) and `decoding.cut` is true.
    The held-out measure reads answers the same way (a cut greedy answer is wrong, a cut
    sample has no vote in maj@k). Off: the answer is parsed from the cut text as it stands.
    Measured on the default run's
    seed at 6 digits: nearly every greedy answer had its 7 digits right, but 65% did not stop
    there, and the cut tails agreed across samples, so the vote kept them (docs/easy-to-hard.md)."""
    cut_at_answer_length: bool = False
    """A sample that did not stop is cut where its answer must end, when the prompt fixes the
    answer's length (`Family.answer_length`: padded addition, n-digit operands -> n+1 answer
    digits), and the cut text, with its stop, is the trace; `decoding.truncated` is true. Read
    from the prompt only, so label-free; applies to a round's samples, not to the held-out
    measure. Otherwise (or where the prompt fixes no length) `cut_has_no_answer` decides."""
    search: SearchConfig = Field(default_factory=SearchConfig)
    """Inference-time search measured on the held-out set (off by default: `method: sample`)."""


class RewardModelConfig(Section):
    """A learned outcome reward model (`evaluator/reward_model.py`): a copy of the policy with a
    scalar head, trained each round (after round 0) with BCE on the round's judged traces, whose
    verdicts are its labels (gold verdicts under `kind: gold`, consensus ones under
    `kind: consensus`). Saved as `orm.safetensors` in the round's checkpoint. At eval it scores
    the held-out samples (needs `heldout_samples` > 0): bon@k, weighted_maj@k and its
    calibration against gold (AUROC, ECE). It selects and is measured; it does not yet filter
    or reward the Reasoner's training data."""

    enabled: bool = False
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=5e-4, steps=200, batch_size=64, warmup_steps=10)
    )
    """The ORM's own optimiser and schedule."""
    balance: bool = True
    """Weight positives by n_neg / n_pos, so a round where most samples are right does not
    teach "always right"."""
    carry: bool = True
    """Continue from the previous round's ORM when its checkpoint has one; else start each
    round from a fresh copy of the policy that sampled the round."""


class PairwiseRewardModelConfig(Section):
    """A pair-wise (Bradley-Terry) reward model (`evaluator/bradley_terry.py`): the ORM's network
    trained each round (after round 0) with -log sigmoid(r_chosen - r_rejected - margin) on
    (judged right, judged wrong) completions of the same task; its free constant is then fitted
    on the round's judged traces so sigmoid(r) is a probability. Saved as `bt_rm.safetensors`
    in the round's checkpoint; at eval it scores the held-out samples (needs `heldout_samples`
    > 0): `calibration.pairwise_rm` (AUROC, ECE, bon@k). It is measured, it does not select."""

    enabled: bool = False
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=5e-4, steps=200, batch_size=32, warmup_steps=10)
    )
    """Its own optimiser and schedule (batch_size counts pairs)."""
    margin: float = Field(0.0, ge=0)
    """Required reward gap: the loss is -log sigmoid(r_c - r_r - margin) (0: plain BT)."""
    pairs_per_task: int = Field(4, ge=1)
    """At most this many (right, wrong) pairs per task, each completion used once per side."""
    carry: bool = True
    """Continue from the previous round's model when its checkpoint has one."""


class GenerativeVerifierConfig(Section):
    """The policy model as its own judge (`evaluator/generative_verifier.py`): it reads
    `<prompt><completion>?` and writes Y or N (after a critique with `with_critique`); the score
    is P(Y) / (P(Y) + P(N)). Verification SFT examples are added to each round's training set
    (round 0: reference traces and one-digit corruptions of them, labelled by the family's
    verifier; later rounds: the round's own traces with the round's verdicts), so one model
    learns to solve and to verify. At eval (with `heldout_samples` > 0) its calibration against
    gold is `calibration.generative_verifier`. With `evaluator.kind: generative` its verdicts
    also judge the round's samples."""

    enabled: bool = False
    with_critique: bool = False
    """Write a critique before the verdict: the number of the first step the family's
    `check_step` finds wrong, or `-`. check_step reads the task's operands, so this is not
    label-free."""
    examples_per_round: int = Field(256, ge=1)
    """Verification examples added to a round's training set, balanced between Y and N as far as
    the round allows."""
    seed_examples: int = Field(1000, ge=0)
    """Verification examples added to round 0's (supervised) training set."""
    threshold: float = Field(0.5, gt=0, lt=1)
    """`kind: generative`: a trace is judged right when its score reaches this."""


class ProcessRewardModelConfig(Section):
    """A learned process reward model (`evaluator/process_reward_model.py`) on Monte-Carlo step
    labels (Math-Shepherd, `evaluator/math_shepherd.py`). Each round after the seed, up to
    `max_traces` of the round's sampled traces are labelled by rollouts of the round's starting
    model from each step prefix (or OmegaPRM's binary search for the first error), a copy of the
    policy with a scalar head trains on them with masked BCE, and the PRM then filters and ranks
    the traces the outcome evaluator kept: their aggregated step score must reach `threshold`,
    and at most `top_k` per task stay. Saved as `prm.safetensors` in the round's checkpoint; at
    eval it is calibrated on held-out samples (`calibration.prm`: AUROC, ECE, first-error
    accuracy). Needs gold answers (`evaluator.kind: gold`) to check the rollouts."""

    enabled: bool = False
    mc_samples: int = Field(4, ge=1)
    """Rollouts per sampled step prefix (Math-Shepherd's N)."""
    binary_search: bool = False
    """Find each wrong trace's first failing prefix by binary search (OmegaPRM: about log2(k+1)
    prefixes instead of k; a trace judged right is labelled all-good without rollouts)."""
    label: Literal["soft", "hard"] = "soft"
    """Train on the share of rollouts that reach the answer (`soft`) or on whether any does."""
    aggregation: Literal["min", "mean", "last", "product"] = "min"
    """How a trace's step scores become one score (filtering, ranking, calibration)."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature of the rollouts."""
    solved_only: bool = True
    """Label only traces of tasks that one of the round's samples solved: on a task the policy
    never solves, rollouts fail from every prefix and the labels blame the first step."""
    max_traces: int = Field(200, ge=1)
    """Traces labelled per round (a seeded random subset of the round's sampled traces), so the
    labelling cost stays bounded: at most max_traces * steps * mc_samples rollouts."""
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=5e-4, steps=200, batch_size=32, warmup_steps=10)
    )
    """The PRM's own optimiser and schedule."""
    balance: bool = True
    """Weight the places labelled >= 0.5 by n_low / n_high (most steps of most traces are good)."""
    surprise: bool = True
    """Add a learned weight times each step's surprise (the least log-probability of its tokens
    under the PRM's own LM head) to its logit. Off: the plain value head at the separator,
    which a tiny model does not learn to check steps with (docs/benchmarks.md)."""
    corruptions: float = Field(1.0, ge=0, le=1)
    """Share of the labelled traces that start with a good step which the PRM also trains on
    with one digit of one of their leading good steps changed, that step and the rest labelled
    bad (`evaluator/step_corruption.py`): Monte-Carlo labels call a slip good whenever a
    rollout recovers from it. 0: MC labels only."""
    agreement: bool = False
    """Cap each step's Monte-Carlo label by its support, the share of the task's other samples
    this round that write the same step (`evaluator/step_agreement.py`): rollouts call a wrong
    step good once it has fixed a lucky answer (yes/no questions), and other samples rarely
    repeat a slip. Free: no rollouts."""
    carry: bool = True
    """Continue from the previous round's PRM when its checkpoint has one; else start from a
    fresh copy of the policy that sampled the round."""
    train_backbone: bool = True
    """Fine-tune the PRM's copy of the policy with its head. False: only the head and the
    surprise weight learn, on the features of the policy that sampled the round (a carried PRM
    keeps its head and weight and takes that policy's backbone), computed once, so training
    costs one forward pass over the labelled traces; and the surprise term reads that policy's
    own token probabilities, which fine-tuning the backbone blurs (docs/benchmarks.md)."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Kept traces whose aggregated PRM score is below this are dropped (0: no filter)."""
    top_k: int | None = Field(None, ge=1)
    """Keep at most this many of a task's kept traces, the best-scored first (None: all)."""
    calibration_samples: int = Field(4, ge=1)
    """Samples per held-out task the PRM is calibrated on at eval (AUROC, ECE)."""
    injected: int = Field(100, ge=0)
    """Held-out reference traces given one wrong step, for first-error accuracy (0: none)."""


class ForwardBackwardConfig(Section):
    """`evaluator.kind: forward-backward` (`evaluator/forward_backward.py`, FOBAR): the votes of
    the k samples are combined with backward checks. For each of a task's most voted answers the
    family poses questions with one number of the task hidden and the answer given as known; the
    round's starting model solves them, and an answer's backward rate is the share of solutions
    that give back the hidden number. Label-free. The questions and their solutions are stored
    with the round (`backward_tasks.parquet`, `backward_traces.parquet`). Families that pose
    them: linear_equation, chain_sum (needs subtraction: `negative_from`), reasoning-gym and
    numeric task files (FOBAR's text template)."""

    alpha: float = Field(0.5, gt=0, le=1)
    """Weight of the forward vote in FOBAR's P_forward^alpha * P_backward^(1 - alpha); the
    score held to `min_vote_share` is vote share x hit rate^((1 - alpha) / alpha), the same
    ranking (0.5, FOBAR's: vote share x hit rate; 1: the plain majority vote)."""
    candidates: int = Field(2, ge=1)
    """The most voted answers of each task that are checked backwards."""
    questions: int = Field(1, ge=1)
    """Backward questions per checked answer, at most (a family may pose fewer)."""
    samples: int = Field(4, ge=1)
    """Solutions sampled per backward question."""
    temperature: float = Field(0.7, ge=0)
    """Sampling temperature of the backward solutions (0: one greedy solution each)."""


class EvaluatorConfig(Section):
    """How solutions are judged during a round."""

    kind: Literal["gold", "consensus", "forward-backward", "generative"] = "gold"
    """`gold`: the family's verifier against the gold answer; `consensus`: label-free majority
    vote over the k samples (the winning answer's vote share is the confidence);
    `forward-backward`: label-free, the vote combined with backward checks (`forward_backward`);
    `generative`: label-free, the model's own verdicts (needs `generative_verifier.enabled`)."""
    min_vote_share: float = Field(0.5, ge=0, le=1)
    """consensus, forward-backward: keep a task's winning answer only when its share (of the
    votes; of the combined shares) reaches this."""
    forward_backward: ForwardBackwardConfig = Field(default_factory=ForwardBackwardConfig)
    """The backward checks of `kind: forward-backward`."""
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    """A learned outcome reward model trained on the round's verdicts (off by default)."""
    pairwise_reward_model: PairwiseRewardModelConfig = Field(
        default_factory=PairwiseRewardModelConfig
    )
    """A Bradley-Terry reward model trained on the round's (right, wrong) pairs (off by default)."""
    generative_verifier: GenerativeVerifierConfig = Field(default_factory=GenerativeVerifierConfig)
    """The policy model judging in language, trained alongside it (off by default)."""
    process_reward_model: ProcessRewardModelConfig = Field(default_factory=ProcessRewardModelConfig)
    """A process reward model on Monte-Carlo step labels that filters the Reasoner's data (off
    by default)."""


class CorrectConfig(Section):
    """The Post-Processor's correction of wrong traces (`postprocess/self_refine.py`,
    `postprocess/corrector.py`, `algorithms/score.py`). Off by default.

    Corrections are made in the process phase (rounds after 0) by the model that sampled the
    round, from a correction prompt `<task prompt><attempt>|<feedback>|`; each is a Trace with
    `parent` = the trace it corrects, judged by the round's Evaluator, given a Decision like any
    trace (so a right correction can become training data), and stored in the round's
    `corrections.parquet` / `correction_judgements.parquet`. With a mode on, every round's
    held-out metrics add `correction: {fixed, broken, ...}` (`loop/heldout_correction.py`)."""

    mode: Literal["none", "refine", "corrector", "score"] = "none"
    """`none`: no correction; `refine`: Self-Refine at inference, traces judged wrong are
    corrected with the Evaluator's feedback up to `attempts` times; `corrector`: the same, and the
    model is also trained by behaviour cloning on (wrong attempt -> right trace) correction
    examples of the round (needs a behaviour-cloning algorithm); `score`: every first attempt gets
    one second attempt without feedback, trained by the policy-gradient algorithm (grpo or rloo)
    on the SCoRe reward r2 + alpha * (r2 - r1)."""
    attempts: int = Field(1, ge=1, le=8)
    """refine, corrector: corrections per wrong trace at most (stops once judged right)."""
    feedback: Literal["none", "outcome", "step"] = "outcome"
    """refine, corrector: what the correction prompt tells the model: nothing (`?`), that the
    attempt was judged wrong (`x`), or its first wrong step's index (step judgements, else the
    family's `check_step`; `x` when none is found). `score` always gives none (SCoRe)."""
    pairs_per_task: int = Field(2, ge=1)
    """corrector: wrong traces per task turned into correction examples (each paired with one of
    the task's right traces)."""
    alpha: float = Field(1.0, ge=0)
    """score: weight of the improvement bonus alpha * (r2 - r1) on the second attempt's reward."""
    seed_pairs: int = Field(0, ge=0)
    """Round 0 (the supervised seed, whose traces are all right): this many reference traces get
    a correction example each, with one answer digit changed as the wrong attempt (or, for
    `keep_share` of them, the reference itself as a right attempt to keep), so the model can
    follow a correction prompt from round 1 on (any mode); 0: none."""
    train_first: bool = True
    """score: also train the first attempts (plain GRPO/RLOO groups, reward r1), the other half
    of SCoRe's stage-II objective; False trains the second attempts only."""
    keep_share: float = Field(0.5, ge=0, lt=1)
    """seed_pairs and corrector: share of the no-feedback (`?`) correction examples that are keep
    examples, a right attempt -> the same trace. Without them `|?|` only ever precedes a change
    and the corrector learns to change right answers (preset `corrector`: 14-29% of right held-out
    answers broken without keeps, 3-7% with 0.5); 0: fixes only."""


class PostProcessConfig(Section):
    """The Post-Processor: which judged traces become training data."""

    keep: Literal["correct", "first-correct"] = "correct"
    """`correct`: every distinct trace judged right; `first-correct`: at most one per task."""
    max_per_task: int = Field(4, ge=1)
    """Cap on kept traces per task (after dedup)."""
    dedup: bool = True
    """Drop traces whose text repeats another kept trace of the same task."""
    max_chars: int = Field(400, gt=0)
    """Length sanity: traces longer than this are dropped."""
    check_steps: bool = True
    """Drop traces with a step the family can check and finds wrong (when it can check steps)."""
    summarise: bool = False
    """Train on each kept trace's summary instead of the trace (`postprocess/summarise.py`):
    repeated steps and steps judged wrong (step judgements, else the family's `check_step`) are
    removed, the answer kept. The summaries are stored in the round's `summaries.parquet` with
    `parent` = the trace they summarise. With it on, a right answer with a wrong step is
    summarised rather than dropped (`check_steps` does not drop it)."""
    correct: CorrectConfig = Field(default_factory=CorrectConfig)
    """Correction of wrong traces: Self-Refine, a trained corrector, or SCoRe (off by default)."""


class DPOConfig(Section):
    """Preference optimisation of the Reasoner (algorithms `iterative-dpo`, `step-dpo`)."""

    beta: float = Field(0.1, gt=0)
    """Strength of the pull toward the reference (DPO's beta; IPO's tau)."""
    loss_type: Literal["sigmoid", "ipo", "sigmoid_norm"] = "sigmoid"
    """`sigmoid`: DPO; `ipo`: IPO on per-token log-ratios; `sigmoid_norm`: length-normalised DPO."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Conservative DPO: the assumed share of flipped preference labels (sigmoid losses only)."""
    rpo_alpha: float = Field(0.0, ge=0)
    """RPO: add this times the chosen completion's mean token NLL (0: off)."""
    pairs_per_task: int = Field(4, ge=1)
    """At most this many (right, wrong) pairs per task, each trace used once per side."""
    reference: Literal["round", "seed"] = "round"
    """`round`: the model at the start of the round (iterative DPO, refreshed each round);
    `seed`: the round-0 model throughout."""


class RLConfig(Section):
    """Policy-gradient training of the Reasoner on its own samples (algorithms `grpo`, `rloo`).

    Each round's k samples per task form a group; the evaluator's outcome score is the reward."""

    scale_advantages: bool = True
    """grpo: divide by the group's reward std (False: Dr. GRPO, centred rewards only)."""
    clip_low: float = Field(0.2, gt=0, lt=1)
    """The ratio pi/pi_old is clipped below at 1 - clip_low."""
    clip_high: float = Field(0.2, gt=0)
    """... and above at 1 + clip_high (DAPO's clip-higher uses 0.28)."""
    kl_beta: float = Field(0.0, ge=0)
    """Weight of the k3 KL penalty to the seed (round-0) model; 0 needs no reference."""
    aggregation: Literal["sequence", "token", "fixed"] = "sequence"
    """Loss over tokens: per-completion mean (GRPO), batch token mean (DAPO), or
    sum / (completions x max_new_tokens) (Dr. GRPO)."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal (they have no advantage signal)."""
    overlong_cache: int = Field(0, ge=0)
    """DAPO soft overlong penalty over the last this-many tokens of max_new_tokens (0: off)."""
    share_prompts: bool = False
    """grpo, rloo: run each prompt once for all of its completions in a minibatch
    (`algorithms/shared_prefix.py`; the tiny backend, others fall back): the same losses to
    float rounding, with fewer FLOPs where prompts are long against completions. How much it
    saves depends on `minibatch`. False: one sequence per row."""
    minibatch: Literal["random", "groups", "spread"] = "random"
    """grpo, rloo: how a pass's completions are cut into minibatches. `random`: shuffled across
    groups; `groups`: whole groups end to end (verl's contiguous minibatches; with
    `share_prompts` a prompt is read once per group, the cheapest, but a step sees few prompts
    and was measured to learn less per step); `spread`: every group dealt round-robin over the
    pass, so each step sees as many prompts as it can, a few completions of each (saves only
    where a pass has fewer groups than a minibatch has rows). docs/benchmarks.md has both."""
    # -- dense rewards and model-based rewards (loop/rl_inputs.py) --
    dense_reward: Literal["none", "implicit", "step-check", "prm"] = "none"
    """Per-token rewards added to the outcome reward (grpo, rloo: their leave-one-out-baselined
    returns-to-go join each token's advantage, PRIME's recipe; ppo: they join GAE's rewards).
    `implicit`: PRIME's beta * log(pi_phi / pi_ref), pi_phi trained each round on the round's
    verdicts (`evaluator/implicit_reward.py`); `step-check`: the family's `check_step` as a step
    verifier, each checked step paying p - 1 (0 right, -1 wrong) at the token that ends it;
    `prm`: the round's learned process reward model (evaluator.process_reward_model), each
    step's probability p paying p - 1 at the token that ends it."""
    dense_weight: float = Field(1.0, gt=0)
    """Scale of the dense rewards against the outcome reward."""
    implicit_beta: float = Field(0.05, gt=0)
    """dense_reward implicit: beta of r_t = beta * log(pi_phi(y_t) / pi_ref(y_t))."""
    implicit_train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=5e-4, steps=40, batch_size=32, warmup_steps=5)
    )
    """dense_reward implicit: pi_phi's optimiser and schedule (outcome BCE on the round's traces)."""
    reward: Literal["verifier", "orm"] = "verifier"
    """grpo, rloo: where a sample's reward comes from. `verifier`: the evaluator's outcome score;
    `orm`: model-based RL, the learned outcome reward model (needs evaluator.reward_model.enabled)
    stands in for the environment: round 1 trains it on its verdicts and is rewarded by the
    verifier, every later round is rewarded by the previous round's ORM, which is then frozen
    (no label reaches training after round 1; the verifier only measures)."""


class PPOConfig(Section):
    """PPO with a learned critic (algorithm `ppo`): per-token rewards, GAE advantages, the
    clipped policy surrogate and the clipped value loss (`algorithms/ppo.py`).

    A round's samples are the rollout batch; PPO's epochs over it and its minibatch size are
    `train.epochs` (or `train.steps`, optimiser steps in all) and `train.batch_size`."""

    gamma: float = Field(1.0, ge=0, le=1)
    """Discount per token; 1 carries the outcome reward to every token of the completion."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE's lambda: 0 is the one-step TD error (leans on the critic, low variance), 1 the
    Monte-Carlo return minus the value (unbiased, noisier)."""
    clip_low: float = Field(0.2, gt=0, lt=1)
    """The ratio pi/pi_old is clipped below at 1 - clip_low."""
    clip_high: float = Field(0.2, gt=0)
    """... and above at 1 + clip_high."""
    value_clip: float = Field(0.0, ge=0)
    """PPO2's clipped value loss: a value may move at most this far from its old value within a
    round (0: no clip, plain squared error). Off by default: a round is one rollout batch and a
    fresh critic starts at 0, so a clip of 0.2 holds round 1's values near 0 while returns are
    near the success rate (measured on the ppo preset: value loss 0.205 vs 0.061, explained
    variance 0.0 vs 0.07 at the end of round 1)."""
    critic_lr: float = Field(1e-4, gt=0)
    """Peak learning rate of the critic's own AdamW (the schedule and clipping are `train`'s)."""
    kl_beta: float = Field(0.0, ge=0)
    """Per-token penalty kl_beta * (log pi_old - log pi_ref) subtracted from the reward, pi_ref
    the seed (round-0) model, as in RLHF PPO; 0 needs no reference."""
    whiten_advantages: bool = True
    """Normalise the advantages to mean 0, std 1 over the round's completion tokens."""
    keep_critic: bool = True
    """Carry the critic across rounds (`critic.safetensors` in each round's checkpoint, so a
    resumed run continues with it); False: each round starts a fresh critic from its policy."""


class StrategyConfig(Section):
    """How the Reasoner learns from what the round kept."""

    algorithm: Literal[
        "star",
        "rft",
        "rest-em",
        "easy-to-hard",
        "iterative-dpo",
        "step-dpo",
        "grpo",
        "rloo",
        "ppo",
    ] = "easy-to-hard"
    """The method this run implements; the preset of the same name sets the fields below.
    star, rft, rest-em, easy-to-hard: behaviour cloning on kept traces; iterative-dpo: DPO on
    (right, wrong) pairs of the same task; step-dpo: DPO on (right, first wrong) steps after a
    shared prefix; grpo, rloo: policy gradient on the sampled groups; ppo: PPO with a critic
    on the sampled completions."""
    rationalize: bool = False
    """STaR: retry failed tasks with the gold answer as a hint; keep rationales that reach it."""
    retrain_from_base: bool = False
    """ReST-EM: each round trains from the seed model rather than continuing."""
    train_on: Literal["round", "union"] = "round"
    """`round`: this round's kept data; `union`: everything kept since round 1 (Lee et al.)."""
    replay_seed: int = Field(0, ge=0)
    """Seed examples mixed into each round's training set (guards against forgetting)."""
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    """Used when algorithm is iterative-dpo or step-dpo."""
    rl: RLConfig = Field(default_factory=RLConfig)
    """Used when algorithm is grpo or rloo."""
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    """Used when algorithm is ppo."""
    offline_rounds: int = Field(0, ge=0)
    """grpo, rloo: also train on the stored groups (traces and verdicts) of up to this many
    earlier rounds, offline: no new samples, importance ratios against the policy that sampled
    each round (recomputed from its checkpoint; `algorithms/offline_rl.py`). 0: this round only."""


class ClusterConfig(Section):
    """Where generation runs: the solve phase's sampling and the held-out evaluation
    (`loop/cluster.py`). Training stays in the loop's process.

    Prompts are cut into fixed shards (`shard_size`), each sampled from its own seed, so every
    `kind` and any number of `workers` make the same records; only `shard_size` changes them."""

    kind: Literal["local", "ray"] = "local"
    """`local`: the shards one after another in this process; `ray`: spread over Ray actors,
    each holding a model replica that receives the new weights after every training phase
    (`pip install reasonloop[ray]`)."""
    address: str | None = None
    """ray: an existing cluster to join (`auto`, `ray://head:10001`, as `ray.init` takes); None
    starts a local one with `workers x cpus_per_worker` CPUs. Its nodes need reasonloop installed
    (or ship it with `runtime_env`)."""
    workers: int = Field(2, gt=0)
    """ray: model replicas (actors)."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """ray: CPUs each replica reserves; it runs `model.threads` torch threads, or this many
    (at least 1) when `model.threads` is 0."""
    gpus_per_worker: float = Field(0.0, ge=0)
    """ray: GPUs each replica reserves (with `model.device: cuda`)."""
    runtime_env: dict = Field(default_factory=dict)
    """ray: `runtime_env` for `ray.init` (e.g. `{py_modules: [...]}` or `{pip: [...]}` for a
    remote cluster without reasonloop); empty: none."""
    shard_size: int = Field(256, gt=0)
    """Prompts per shard, rounded up to a whole number of decode batches
    (`reasoner.batch_size // samples`); each shard is sampled from its own seed, so this, unlike
    the other fields, changes the samples. Smaller shards spread a phase over more workers."""


class RunConfig(Section):
    """A whole run: one pattern (which modules evolve) with one strategy."""

    preset: str = ""
    """Name of the preset this config came from (informational)."""
    seed: int = 0
    """Seeds tasks, sampling and training; the same seed gives the same records."""
    rounds: int = Field(4, ge=0)
    """Self-improvement rounds after round 0 (the supervised seed)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    seed_train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=1500))
    """Round 0: supervised training on gold reference traces of the seed levels."""
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=300))
    """Training in each self-improvement round."""
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    creator: CreatorConfig = Field(default_factory=CreatorConfig)
    reasoner: ReasonerConfig = Field(default_factory=ReasonerConfig)
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    postprocess: PostProcessConfig = Field(default_factory=PostProcessConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    heldout_samples: int = Field(0, ge=0)
    """Besides greedy pass@1, sample this many per held-out task for maj@k and pass@k (0: off)."""
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    """Where generation runs (in this process, or over Ray actors); may change when a run is
    resumed, except `cluster.shard_size`."""
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    """Also send each finished round's metrics, under summary.json's names (`heldout.pass@1`,
    `train.loss_last`, ...) with the round as the step, to these trackers. Each needs its package
    (`pip install reasonloop[tracking]`). TensorBoard writes RUN/tensorboard; MLflow uses
    $MLFLOW_TRACKING_URI, else RUN/mlflow.db (SQLite); W&B runs offline into RUN/wandb unless $WANDB_MODE or
    $WANDB_API_KEY is set. Keys come from the environment only and are never written to the run.
    May change when a run is resumed."""

    @model_validator(mode="after")
    def _cluster(self) -> RunConfig:
        if self.cluster.kind == "ray" and self.model.backend == "openai":
            raise ValueError(
                "cluster.kind 'ray' spreads generation over model replicas; backend 'openai' "
                "generates on its server (set cluster.kind: local)"
            )
        return self

    @model_validator(mode="after")
    def _self_play(self) -> RunConfig:
        # The proposer writes programs that the sandbox runs: only these families read them.
        if self.creator.mode == "self-play" and self.tasks.family not in SELF_PLAY_FAMILIES:
            raise ValueError(
                f"creator.mode 'self-play' needs tasks.family: {' or '.join(SELF_PLAY_FAMILIES)} "
                f"(the learned proposer writes programs), got tasks.family {self.tasks.family!r}"
            )
        if self.creator.mode == "self-play" and self.strategy.algorithm not in (
            "star",
            "rft",
            "rest-em",
            "easy-to-hard",
        ):
            raise ValueError(
                "creator.mode 'self-play' trains its proposer by rejection-sampling SFT beside "
                "the solver: strategy.algorithm must be star, rft, rest-em or easy-to-hard, got "
                f"{self.strategy.algorithm!r}"
            )
        return self

    @model_validator(mode="after")
    def _correct(self) -> RunConfig:
        mode, algorithm = self.postprocess.correct.mode, self.strategy.algorithm
        sft = ("star", "rft", "rest-em", "easy-to-hard")
        if mode == "corrector" and algorithm not in sft:
            raise ValueError(
                f"postprocess.correct.mode 'corrector' trains correction examples by behaviour "
                f"cloning; strategy.algorithm {algorithm!r} does not (use one of {list(sft)})"
            )
        if mode == "score" and algorithm not in ("grpo", "rloo"):
            raise ValueError(
                f"postprocess.correct.mode 'score' trains second attempts by policy gradient; "
                f"strategy.algorithm {algorithm!r} does not (use grpo or rloo)"
            )
        rl = self.strategy.rl
        if mode == "score" and (
            rl.dense_reward != "none" or rl.reward != "verifier" or self.strategy.offline_rounds
        ):
            raise ValueError(
                "postprocess.correct.mode 'score' rewards second attempts from the round's "
                "verdicts only: it needs strategy.rl.dense_reward: none, strategy.rl.reward: "
                "verifier and strategy.offline_rounds: 0"
            )
        return self

    @model_validator(mode="after")
    def _reward_model(self) -> RunConfig:
        # Its only outputs are measured on held-out samples: without them it would train unseen.
        if self.evaluator.reward_model.enabled and self.heldout_samples == 0:
            raise ValueError(
                "evaluator.reward_model.enabled needs heldout_samples > 0 (bon@k, "
                "weighted_maj@k and its calibration are measured on the held-out samples)"
            )
        return self

    @model_validator(mode="after")
    def _search(self) -> RunConfig:
        search = self.reasoner.search
        if search.method == "sample":
            return self
        needs = {"orm": "reward_model", "prm": "process_reward_model"}.get(search.scorer)
        if needs and not getattr(self.evaluator, needs).enabled:
            raise ValueError(
                f"reasoner.search.scorer {search.scorer!r} needs evaluator.{needs}.enabled "
                "(the search is guided by the round's trained model)"
            )
        return self

    @model_validator(mode="after")
    def _process_reward_model(self) -> RunConfig:
        prm = self.evaluator.process_reward_model
        if not prm.enabled:
            return self
        if self.evaluator.kind != "gold":
            raise ValueError(
                "evaluator.process_reward_model.enabled checks its Monte-Carlo rollouts against "
                f"the gold answer: evaluator.kind must be gold, got {self.evaluator.kind!r}"
            )
        bc = ("star", "rft", "rest-em", "easy-to-hard")
        # With dense_reward 'prm' its step scores reward grpo/rloo/ppo (checked in _rl_signals).
        if self.strategy.algorithm not in bc and self.strategy.rl.dense_reward != "prm":
            raise ValueError(
                "evaluator.process_reward_model.enabled filters the round's SFT data: "
                f"strategy.algorithm must be one of {', '.join(bc)}, got "
                f"{self.strategy.algorithm!r} (or set strategy.rl.dense_reward: prm)"
            )
        return self

    @model_validator(mode="after")
    def _learned_judges(self) -> RunConfig:
        ev = self.evaluator
        if ev.pairwise_reward_model.enabled and self.heldout_samples == 0:
            raise ValueError(
                "evaluator.pairwise_reward_model.enabled needs heldout_samples > 0 (its "
                "calibration and bon@k are measured on the held-out samples)"
            )
        if ev.kind == "generative" and not ev.generative_verifier.enabled:
            raise ValueError(
                "evaluator.kind 'generative' needs evaluator.generative_verifier.enabled: true "
                "(the model must be trained to verify before its verdicts can judge)"
            )
        fits = ("star", "rft", "rest-em", "easy-to-hard", "iterative-dpo")
        if ev.generative_verifier.enabled and self.strategy.algorithm not in fits:
            raise ValueError(
                "evaluator.generative_verifier.enabled trains the verifier through the round's "
                f"SFT examples or DPO pairs: strategy.algorithm must be one of {', '.join(fits)}, "
                f"got {self.strategy.algorithm!r}"
            )
        return self

    @model_validator(mode="after")
    def _rl_signals(self) -> RunConfig:
        # Dense, model-based and offline rewards only feed the policy-gradient trainers.
        st, rl = self.strategy, self.strategy.rl
        pg = ("grpo", "rloo")
        if rl.dense_reward != "none" and st.algorithm not in (*pg, "ppo"):
            raise ValueError(
                f"strategy.rl.dense_reward {rl.dense_reward!r} needs strategy.algorithm grpo, "
                f"rloo or ppo, got {st.algorithm!r} (or set dense_reward: none)"
            )
        if rl.dense_reward == "prm" and not self.evaluator.process_reward_model.enabled:
            raise ValueError(
                "strategy.rl.dense_reward 'prm' needs evaluator.process_reward_model.enabled: "
                "true (its step scores are the dense rewards)"
            )
        if rl.reward == "orm":
            if st.algorithm not in pg:
                raise ValueError(
                    f"strategy.rl.reward 'orm' needs strategy.algorithm grpo or rloo, got "
                    f"{st.algorithm!r} (or set reward: verifier)"
                )
            if not self.evaluator.reward_model.enabled:
                raise ValueError(
                    "strategy.rl.reward 'orm' needs evaluator.reward_model.enabled: true (the "
                    "learned reward model is the reward)"
                )
        if st.offline_rounds and st.algorithm not in pg:
            raise ValueError(
                f"strategy.offline_rounds {st.offline_rounds} needs strategy.algorithm grpo or "
                f"rloo, got {st.algorithm!r} (or set offline_rounds: 0)"
            )
        return self

    @property
    def uses_gold_after_seed(self) -> bool:
        # A generated critique is taught from the family's step checker (it reads the task's
        # operands): conservatively counted as gold supervision.
        gv = self.evaluator.generative_verifier
        critique = gv.enabled and gv.with_critique
        return self.evaluator.kind == "gold" or self.strategy.rationalize or critique


# --- loading: presets, YAML files, overrides ----------------------------------------------

PRESETS_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "easy-to-hard-packed"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the field and what is allowed."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of config fields at the top level, got {type(data).__name__}"
        )
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(
                f"  field `{field}`: unknown field (check the spelling; `reasonloop presets --show NAME` prints a full config)"
            )
            continue
        got = e.get("input")
        got_s = repr(got) if not isinstance(got, dict) else "a mapping"
        lines.append(f"  field `{field}`: got {got_s}: {e['msg']}")
    return "\n".join(lines)


def validate(data: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from None


def load_config(
    preset: str | None = None,
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset (default easy-to-hard-packed, unless a file is given) < config file < overrides."""
    data: dict[str, Any] = {}
    sources = []
    if preset is None and path is None:
        preset = DEFAULT_PRESET
    if preset is not None:
        file = PRESETS_DIR / f"{preset}.yaml"
        if not file.exists():
            known = preset_names()
            close = difflib.get_close_matches(preset, known, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise ConfigError(f"unknown preset `{preset}`{hint}; known presets: {', '.join(known)}")
        data = _merge(data, _read_yaml(file))
        data.setdefault("preset", preset)
        sources.append(f"preset {preset}")
    if path is not None:
        user = _read_yaml(Path(path))
        if preset is None and "preset" in user:
            # A user file may start from a preset: `preset: star` then its own changes.
            base_name = user["preset"]
            if isinstance(base_name, str) and base_name:
                data = _merge(load_config(preset=base_name).model_dump(mode="json"), data)
        data = _merge(data, user)
        sources.append(str(path))
    data = _merge(data, overrides or {})
    return validate(data, " + ".join(sources) or "config")
