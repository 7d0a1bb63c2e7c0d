"""The hf backend: any `transformers` causal LM behind `models.base.LanguageModel`.

A model comes from a local directory (`ModelConfig.path`; nothing is ever downloaded) or is
built fresh from a `transformers` config dict (`ModelConfig.hf_config`). The tokenizer is the
directory's own when it has one; otherwise the tiny backend's character tokenizer, so a tiny
model exported with `TinyModel.export_hf` loads here and behaves the same.

Sequences follow one convention on both tokenizers: a prompt is `[bos] + encode(prompt)` (a
tokenizer without bos uses its eos there, as GPT-2 does) and a completion is `encode(text)`
right after it, with no special tokens; `encode_prompt` is the one place to change that. With
`model.chat_template` the prompt text is first rendered as one user message by the tokenizer's
chat template (`HFTokenizer.encode_prompt`, which the trainers' `sft.encode_example` uses too,
so training sees what generation sees). Generation uses `model.generate` in batches of
left-padded prompts; the log-probability of each sampled token is recorded on the way (under
the model itself, temperature 1), without keeping the logits of every step.

LoRA (`model.lora`): `module` is then a `peft.PeftModel` whose base weights are frozen, so the
trainers, which optimise the parameters that require grad, train the adapters alone. A
checkpoint is one directory holding the base model as transformers writes it (config.json,
model.safetensors) and the adapter as peft writes it (adapter_config.json,
adapter_model.safetensors). Why the base weights too, rather than a reference to the model the
run started from: a checkpoint must resume the run, `reasonloop eval` and `reasonloop serve`
with nothing else present (the starting directory may have moved, a model built from
`hf_config` has no directory at all, and `merge_on_save` changes the base every save); it is
also the layout transformers itself loads as base plus adapter when peft is installed.
`export_merged` writes a plain merged model for tools without peft.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from reasonloop.config import LoRAConfig, ModelConfig
from reasonloop.models.base import Completion, Sampling, check_room, check_sampling
from reasonloop.models.tiny import _atomic_write_dir
from reasonloop.models.tokenizer import N_USED, NEWLINE_ID, CharTokenizer
from reasonloop.reasoner.format import STEP_SEP

MAX_BATCH_ROWS = 256
"""Rows (prompts x samples) generated together; bounds the KV cache's memory."""
LOGPROB_BATCH_TOKENS = 16384
"""Padded tokens per forward in `logprobs`."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SAMPLING = Sampling()
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""A LoRA checkpoint's adapter files, next to the base model's (peft's names)."""
NO_ADAPTER = "no-adapter"
"""A subfolder that does not exist, where transformers is told to look for an adapter: it then
loads the base weights alone, and peft puts the adapter on them (see `HFModel.load`)."""
_LORA_KEY = re.compile(r"\.lora_\w+\.")
"""State-dict keys of adapter weights (lora_A, lora_B, lora_embedding_A, ...)."""


class HFTokenizer:
    """A `transformers` tokenizer behind `models.base.Tokenizer` (no special tokens added)."""

    def __init__(self, hf: Any, chat: bool = False) -> None:
        if hf.eos_token_id is None:
            raise ValueError(f"tokenizer {hf.name_or_path!r} has no eos token")
        if chat and not getattr(hf, "chat_template", None):
            raise ValueError(
                f"model.chat_template is set but tokenizer {hf.name_or_path!r} has no chat template"
            )
        self.hf = hf
        self.chat = chat
        """Prompts go through the chat template (`model.chat_template`)."""
        self.vocab_size: int = len(hf)
        self.eos_id: int = hf.eos_token_id
        self.bos_id: int = hf.bos_token_id if hf.bos_token_id is not None else self.eos_id
        self.pad_id: int = hf.pad_token_id if hf.pad_token_id is not None else self.eos_id
        self._newline_ids: list[int] | None = None

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """A conversation as the chat template writes it, the assistant's turn opened, without
        a leading bos (`encode_prompt` puts bos in front itself; a template that writes it too
        would double it)."""
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = getattr(self.hf, "bos_token", None)
        if bos and text.startswith(bos):
            text = text[len(bos) :]
        return text

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt ids as generation, scoring and training see them: bos, then the text (as one
        user message of the chat template when `chat`)."""
        if self.chat:
            prompt = self.render_chat([{"role": "user", "content": prompt}])
        return [self.bos_id, *self.encode(prompt)]

    def newline_ids(self) -> list[int]:
        """Ids of the (non-special) tokens whose text contains a newline ("\\n", ".\\n\\n"...)."""
        if self._newline_ids is None:
            special = set(self.hf.all_special_ids)
            texts = self.hf.batch_decode([[i] for i in range(len(self.hf))])
            self._newline_ids = [i for i, t in enumerate(texts) if "\n" in t and i not in special]
        return self._newline_ids


Tokenizer = CharTokenizer | HFTokenizer


class HFModel:
    """A `transformers` causal LM (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, tokenizer: Tokenizer, config: ModelConfig) -> None:
        self.module = module
        """The network the trainers optimise: the transformers model, or its `peft.PeftModel`
        with LoRA (whose base weights do not require grad)."""
        self.tokenizer = tokenizer
        self.config = config
        vocab = self._lm.get_output_embeddings().weight.shape[0]
        if isinstance(tokenizer, CharTokenizer) and vocab < tokenizer.vocab_size:
            raise ValueError(
                f"model vocabulary is {vocab} tokens; the character tokenizer needs {tokenizer.vocab_size}"
            )
        if config.chat_template and not (isinstance(tokenizer, HFTokenizer) and tokenizer.chat):
            raise ValueError(
                "model.chat_template needs a tokenizer with a chat template; this model has the "
                "character tokenizer (or a tokenizer without one)"
            )
        # PeftModel.forward takes **kwargs, so ask the transformers model itself.
        params = inspect.signature(self._lm.forward).parameters
        self._takes_positions = "position_ids" in params
        self._takes_logits_to_keep = "logits_to_keep" in params

    @property
    def lora(self) -> bool:
        """Whether `module` carries LoRA adapters (a `peft.PeftModel`)."""
        return _is_peft(self.module)

    @property
    def _lm(self) -> Any:
        """The transformers model (with the adapter layers inside it, under LoRA): its config,
        generation config, `generate` and base model are the ones that matter."""
        return self.module.get_base_model() if self.lora else self.module

    # ----------------------------------------------------------------- building, saving, loading

    @classmethod
    def from_config(cls, cfg: ModelConfig, seed: int) -> HFModel:
        """Load `cfg.path`, or build a fresh model from `cfg.hf_config` (same seed, same weights;
        LoRA's adapters are drawn from the seed too)."""
        if cfg.backend != "hf":
            raise ValueError(f"model.backend is {cfg.backend!r}; HFModel needs 'hf'")
        if cfg.decode_dtype != "float32":
            raise ValueError(
                f"model.decode_dtype is {cfg.decode_dtype!r}, a tiny-backend option; the hf "
                "backend generates in model.dtype"
            )
        if cfg.path is not None and cfg.hf_config is not None:
            raise ValueError("model.path and model.hf_config are exclusive: load one or build one")
        if cfg.path is not None:
            return cls.load(cfg.path, dtype=cfg.dtype, device=cfg.device, config=cfg, seed=seed)
        if cfg.hf_config is None:
            raise ValueError(
                "model.backend 'hf' needs model.path (a local model directory) or model.hf_config "
                "(a transformers config dict such as {model_type: llama, hidden_size: 64, ...})"
            )
        from transformers import AutoConfig, AutoModelForCausalLM

        options = dict(cfg.hf_config)
        model_type = options.pop("model_type", None)
        if not model_type:
            raise ValueError("model.hf_config needs a 'model_type' (llama, qwen2, gpt2, ...)")
        tok = CharTokenizer()
        # The character tokenizer's ids, unless the config says otherwise.
        options.setdefault("vocab_size", tok.vocab_size)
        options.setdefault("pad_token_id", tok.pad_id)
        options.setdefault("bos_token_id", tok.bos_id)
        options.setdefault("eos_token_id", tok.eos_id)
        try:
            hf_cfg = AutoConfig.for_model(model_type, **options)
        except (ValueError, TypeError) as e:
            raise ValueError(f"model.hf_config is not a valid transformers config: {e}") from e
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Built in its dtype rather than cast after: a cast would turn float32 buffers (RoPE's
            # inv_freq) bf16 too, which `from_pretrained` does not, so a checkpoint reloaded
            # would compute something else than the model that wrote it.
            module = AutoModelForCausalLM.from_config(hf_cfg, dtype=DTYPES[cfg.dtype])
        module = module.to(device=cfg.device)
        module = _adapt(module, cfg, seed)
        module.train()  # like the tiny backend; generate and logprobs switch to eval themselves
        return cls(module, tok, cfg.model_copy())

    @classmethod
    def load(
        cls,
        path: str | Path,
        dtype: str = "float32",
        device: str = "cpu",
        config: ModelConfig | None = None,
        seed: int = 0,
    ) -> HFModel:
        """A local model directory (config.json and weights; tokenizer files optional), with its
        LoRA adapter when it holds one (`save`'s layout).

        `config` (a run's model section) then applies: a LoRA checkpoint's adapter trains on when
        `config.lora` is set and is merged into the weights when it is not; a plain directory
        gets a fresh adapter (drawn from `seed`) when `config.lora` is set; gradient
        checkpointing and the chat template follow it. Without `config` (serving), the directory
        is taken as it is."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"hf model directory {path} does not exist (nothing is downloaded)"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path / 'config.json'} is missing: not a transformers model directory"
            )
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        adapter = (path / ADAPTER_CONFIG).is_file()
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per checkpoint load is noise in a round's log
        try:
            # safetensors only: a pickled pytorch_model.bin can run code when it is loaded.
            module = AutoModelForCausalLM.from_pretrained(
                path,
                local_files_only=True,
                dtype=DTYPES[dtype],
                use_safetensors=True,
                # Left to itself, transformers would inject the adapter into the model; peft's
                # own PeftModel (what `get_peft_model` makes) is built below instead.
                **({"adapter_kwargs": {"subfolder": NO_ADAPTER}} if adapter else {}),
            )
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot load a causal LM from {path}: {e}") from e
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        module = module.to(device)
        if adapter:
            module = _load_adapter(module, path)
        chat = config is not None and config.chat_template
        tokenizer: Tokenizer
        if any((path / f).is_file() for f in TOKENIZER_FILES):
            hf_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            tokenizer = HFTokenizer(hf_tok, chat=chat)
        else:
            tokenizer = CharTokenizer()
        if config is None:
            cfg = ModelConfig(backend="hf", path=str(path), dtype=dtype, device=device)
        else:
            cfg = config.model_copy(update={"dtype": dtype, "device": device})
            module = _adapt(module, cfg, seed)
        module.train()
        return cls(module, tokenizer, cfg)

    def save(self, path: str | Path) -> None:
        """Write config, safetensors weights and tokenizer (if not the character one) atomically;
        with LoRA, the base weights and the adapter (see the module docstring).

        With `lora.merge_on_save` the adapter is first folded into the base weights, in this
        model too, and its B matrices zeroed: the model computes the same function (up to
        rounding), and what is saved is exactly what it holds, so a run resumed from the
        checkpoint continues as the uninterrupted one does."""
        if self.lora and self.config.lora is not None and self.config.lora.merge_on_save:
            self._fold_adapter()

        def write(tmp: Path) -> None:
            if self.lora:
                self._lm.save_pretrained(tmp, state_dict=self._base_state_dict())
                self._save_adapter(tmp)
            else:
                self.module.save_pretrained(tmp)
            if isinstance(self.tokenizer, HFTokenizer):
                self.tokenizer.hf.save_pretrained(tmp)

        _atomic_write_dir(path, write)

    def export_merged(self, path: str | Path) -> None:
        """Write a stand-alone transformers directory: the adapter, if any, merged into the
        weights (peft's `merge_and_unload`, on a copy: this model keeps its adapter). Loads with
        plain `AutoModelForCausalLM.from_pretrained`, no peft needed."""
        module = copy.deepcopy(self.module).merge_and_unload() if self.lora else self.module

        def write(tmp: Path) -> None:
            module.save_pretrained(tmp)
            if isinstance(self.tokenizer, HFTokenizer):
                self.tokenizer.hf.save_pretrained(tmp)

        _atomic_write_dir(path, write)

    def _base_state_dict(self) -> dict[str, torch.Tensor]:
        """The transformers model's weights under their own names: adapter weights left out,
        peft's `.base_layer.` wrapping undone (what `from_pretrained` expects)."""
        return {
            k.replace(".base_layer.", "."): v
            for k, v in self._lm.state_dict().items()
            if not _LORA_KEY.search(k)
        }

    def _save_adapter(self, directory: Path) -> None:
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(self.module)
        save_file(
            {k: v.detach().contiguous() for k, v in weights.items()},
            str(directory / ADAPTER_WEIGHTS),
            metadata={"format": "pt"},
        )
        peft_config = copy.copy(self.module.peft_config["default"])
        # The base is the directory itself, not the model the run started from.
        peft_config.base_model_name_or_path = None
        peft_config.save_pretrained(str(directory))

    @torch.no_grad()
    def _fold_adapter(self) -> None:
        """W += (alpha / r) B A in every adapted layer, then B = 0 (A is kept, so B still gets
        a gradient: LoRA's own starting point)."""
        self.module.merge_adapter()
        for name, p in self.module.named_parameters():
            if ".lora_B." in name or ".lora_embedding_B." in name:
                p.zero_()
        self.module.unmerge_adapter()  # subtracts B A, now 0: only clears peft's merged state

    def copy(self) -> HFModel:
        """An independent deep copy of the weights (the tokenizer is shared: it is immutable).
        Under LoRA the frozen base weights are copied too: a reference or critic copy then
        stays valid whatever `merge_on_save` later does to this model's base."""
        return HFModel(copy.deepcopy(self.module), self.tokenizer, self.config.model_copy())

    @property
    def device(self) -> torch.device:
        return self._lm.get_output_embeddings().weight.device

    # ---------------------------------------------------------------------------- forward

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt ids as generation and scoring see them: bos, then the text (through the chat
        template with `model.chat_template`)."""
        if isinstance(self.tokenizer, HFTokenizer):
            return self.tokenizer.encode_prompt(prompt)
        return [self.tokenizer.bos_id, *self.tokenizer.encode(prompt)]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V]. With a mask, positions count real tokens only, so left and right
        padding both work (transformers' forward alone counts pads on the left). With `at`
        [B, T] (bool), logits [N, V] at the set positions only: the LM head runs from the first
        position any row sets (transformers' `logits_to_keep`), so with a large vocabulary the
        prompt's common part costs no logits."""
        kwargs = self._inputs(input_ids, attention_mask)
        if at is None:
            return self.module(**kwargs).logits
        used = at.any(0)
        first = int(used.to(torch.uint8).argmax()) if bool(used.any()) else 0
        if first and self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = at.shape[1] - first  # the last k positions
            return self.module(**kwargs).logits[at[:, first:]]
        return self.module(**kwargs).logits[at]

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The base model's last hidden states [B, T, D] (after its final norm, before the LM
        head), laid out as `forward` does: the input of a value head. The base model alone
        runs, so no [B, T, V] logits are computed."""
        return self._lm.base_model(**self._inputs(input_ids, attention_mask)).last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] of `hidden_states`' output: the output embedding alone (a model that
        rescales or soft-caps its logits in `forward` is not matched exactly)."""
        return self._lm.get_output_embeddings()(hidden)

    def _inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> dict[str, Any]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {tuple(input_ids.shape)}")
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            if self._takes_positions:
                kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return kwargs

    # -------------------------------------------------------------------------- log-probs

    @torch.inference_mode()
    def logprobs(self, prompts: list[str], completions: list[str]) -> list[torch.Tensor]:
        """Log-probability of each completion token given its prompt: one float32 CPU tensor each.

        The completion is scored exactly as given; append "\\n" to score a newline stop too
        (that is what `Completion.logprob` includes)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        seqs = [
            (self.encode_prompt(p), self.tokenizer.encode(c))
            for p, c in zip(prompts, completions, strict=True)
        ]
        out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda j: len(seqs[j][0]) + len(seqs[j][1]))
        pad = self.tokenizer.pad_id
        with _eval(self.module):
            start = 0
            while start < len(order):
                end = start + 1
                while end < len(order):  # ascending lengths: the last row sets the padded width
                    width = len(seqs[order[end]][0]) + len(seqs[order[end]][1])
                    if width * (end - start + 1) > LOGPROB_BATCH_TOKENS:
                        break
                    end += 1
                rows = order[start:end]
                T = max(len(seqs[j][0]) + len(seqs[j][1]) for j in rows)
                ids = torch.full((len(rows), T), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), T), dtype=torch.long)
                for r, j in enumerate(rows):
                    full = seqs[j][0] + seqs[j][1]
                    ids[r, : len(full)] = torch.tensor(full)
                    mask[r, : len(full)] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                logp = torch.log_softmax(self.forward(ids[:, :-1], mask[:, :-1]).float(), -1)
                logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()
                for r, j in enumerate(rows):
                    p_len, c_len = len(seqs[j][0]), len(seqs[j][1])
                    out[j] = logp[r, p_len - 1 : p_len - 1 + c_len].clone()
                start = end
        return out

    # ---------------------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(
        self, prompts: list[str], n: int = 1, sampling: Sampling = DEFAULT_SAMPLING
    ) -> list[list[Completion]]:
        """n completions per prompt, with `model.generate` in batches of up to MAX_BATCH_ROWS rows.

        A completion ends at eos, at the first newline when `sampling.stop_at_newline`, after
        `max_new_tokens`, or at the model's `max_position_embeddings`. `Completion.text` ends
        before the stop (a token like ".\\n" keeps its "."); `n_tokens` and `logprob` include the
        stop token. With `sampling.stop_at_step` the text is cut after its first ";" once decoded
        (post-hoc: the rows decode on to their usual stop). The same `sampling.seed` gives the
        same completions."""
        check_sampling(sampling, n)
        encoded = [self.encode_prompt(p) for p in prompts]
        limit = getattr(self._lm.config, "max_position_embeddings", None)
        if limit is not None:
            check_room(encoded, limit, "max_position_embeddings")
        results: list[list[Completion]] = [[] for _ in prompts]
        if not prompts:
            return results
        eos = self._eos_ids()
        stops = set(eos) | (set(self._newline_ids()) if sampling.stop_at_newline else set())
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        per_batch = max(1, MAX_BATCH_ROWS // n)
        with _eval(self.module), _seeded(sampling.seed, self.device):
            for b in range(0, len(order), per_batch):
                idx = order[b : b + per_batch]
                batch = [encoded[i] for i in idx]
                budgets = [
                    sampling.max_new_tokens
                    if limit is None
                    else min(sampling.max_new_tokens, limit - len(e))
                    for e in batch
                ]
                rows = self._decode(batch, n, sampling, max(budgets), sorted(stops))
                for k, i in enumerate(idx):
                    results[i] = [
                        self._completion(tokens, logps, budgets[k], set(eos), stops)
                        for tokens, logps in rows[k * n : (k + 1) * n]
                    ]
                    if sampling.stop_at_step:
                        results[i] = [
                            self._cut_at_step(c, tokens, logps)
                            for c, (tokens, logps) in zip(
                                results[i], rows[k * n : (k + 1) * n], strict=True
                            )
                        ]
        return results

    def _decode(
        self, encoded: list[list[int]], n: int, sampling: Sampling, steps: int, stops: list[int]
    ) -> list[tuple[list[int], list[float]]]:
        """(new tokens, their log-probs) per row, rows prompt-major (prompt 0's n samples first)."""
        if steps <= 0:
            return [([], [])] * (len(encoded) * n)
        from transformers import GenerationConfig, LogitsProcessorList

        P = max(map(len, encoded))
        pad = self.tokenizer.pad_id
        ids = torch.full((len(encoded), P), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), P), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, P - len(e) :] = torch.tensor(e)
            mask[i, P - len(e) :] = 1
        greedy = sampling.temperature == 0
        gen = GenerationConfig(
            max_new_tokens=steps,
            do_sample=not greedy,
            num_return_sequences=1 if greedy else n,  # greedy samples are all alike: decode one
            pad_token_id=pad,
            bos_token_id=self.tokenizer.bos_id,
            eos_token_id=stops,
            use_cache=True,
            **(
                {}
                if greedy
                else {
                    "temperature": sampling.temperature,
                    "top_k": sampling.top_k,
                    "top_p": sampling.top_p,
                }
            ),
        )
        recorder = _LogprobRecorder(self._suppressed())
        # generate() fills what `gen` leaves unset from the model's own generation config (a
        # checkpoint's repetition_penalty, say); a blank one keeps decoding to what we ask
        # (on the transformers model: a PeftModel's own attribute would not reach its generate)
        lm = self._lm
        saved = lm.generation_config
        lm.generation_config = GenerationConfig()
        try:
            out = lm.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=gen,
                logits_processor=LogitsProcessorList([recorder]),
            )
        finally:
            lm.generation_config = saved
        new = out[:, P:]
        rows = list(zip(new.tolist(), recorder.finish(new).tolist(), strict=True))
        return [r for r in rows for _ in range(n)] if greedy else rows

    def _completion(
        self, tokens: list[int], logps: list[float], budget: int, eos: set[int], stops: set[int]
    ) -> Completion:
        limit = min(budget, len(tokens))
        for t in range(limit):
            if tokens[t] in stops:
                taken = logps[: t + 1]
                if tokens[t] in eos:
                    text = self.tokenizer.decode(tokens[:t])
                    return Completion(text, t + 1, float(sum(taken)))
                # a newline token, possibly with text before the newline
                text = self.tokenizer.decode(tokens[: t + 1]).split("\n", 1)[0]
                # Per-token log-probs only where the sampled tokens are those training encodes
                # for text + "\n" (`sft.encode_example`); a subword vocabulary may tokenize the
                # decoded text otherwise, and then a policy-gradient step scores it afresh.
                same = self.tokenizer.encode(text + "\n") == tokens[: t + 1]
                per_token = tuple(taken) if same else None
                return Completion(text, t + 1, float(sum(taken)), True, per_token)
        text = self.tokenizer.decode(tokens[:limit])
        return Completion(text, limit, float(sum(logps[:limit])), stopped=False)

    def _cut_at_step(self, c: Completion, tokens: list[int], logps: list[float]) -> Completion:
        """`Sampling.stop_at_step` by truncation after decoding: a subword vocabulary has many
        tokens holding ";" (";\\n", "];"), so the cut is at the first token whose text brings a
        ";" in, keeping the text up to and including it; that token ends the step and counts
        (the tokens decoded past it are wasted work, not counted)."""
        if STEP_SEP not in c.text:
            return c
        for t in range(c.n_tokens):
            text = self.tokenizer.decode(tokens[: t + 1])
            if STEP_SEP in text:
                cut = text[: text.index(STEP_SEP) + 1]
                return Completion(cut, t + 1, float(sum(logps[: t + 1])))
        return c

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_id}
        configured = getattr(self._lm.generation_config, "eos_token_id", None)
        if isinstance(self.tokenizer, HFTokenizer) and configured is not None:
            # chat models end a turn with their own token (Llama 3's <|eot_id|>, ...)
            ids |= set(configured) if isinstance(configured, list) else {configured}
        return sorted(ids)

    def _newline_ids(self) -> list[int]:
        if isinstance(self.tokenizer, CharTokenizer):
            return [NEWLINE_ID]
        return self.tokenizer.newline_ids()

    def _suppressed(self) -> list[int]:
        """Ids never sampled: padding, bos, and ids the tokenizer does not have."""
        vocab = self._lm.get_output_embeddings().weight.shape[0]
        tok = self.tokenizer
        if isinstance(tok, CharTokenizer):
            return sorted({tok.pad_id, tok.bos_id, *range(N_USED, vocab)})
        ids = {i for i in (tok.pad_id, tok.bos_id) if i != tok.eos_id}
        return sorted(ids | set(range(tok.vocab_size, vocab)))


# ------------------------------------------------------------------------- LoRA and options


def _is_peft(module: torch.nn.Module) -> bool:
    # No PeftModel can exist before peft is imported, so a model without LoRA never imports it.
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(module, peft.PeftModel)


def _import_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ValueError(
            "model.lora needs the `peft` package: pip install 'peft>=0.11' "
            "(or `pip install reasonloop[hf]`)"
        ) from None
    return peft


def _peft_config(lora: LoRAConfig) -> Any:
    peft = _import_peft()
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        task_type="CAUSAL_LM",
    )


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft asks every model for `is_gradient_checkpointing`, which transformers 5 deprecates
    with a FutureWarning: noise at every checkpoint load, and nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
        )
        yield


def _wrap_lora(module: torch.nn.Module, lora: LoRAConfig, seed: int) -> torch.nn.Module:
    """`module` with fresh adapters (A random from `seed`, B zero: the function is unchanged)
    and only the adapters (and `lora.bias`'s biases) trainable. peft keeps adapters float32 over
    a bf16 or fp16 base (its `autocast_adapter_dtype`)."""
    peft = _import_peft()
    with torch.random.fork_rng(devices=[]), _quiet_peft():
        torch.manual_seed(seed)
        try:
            return peft.get_peft_model(module, _peft_config(lora))
        except ValueError as e:  # target modules that match nothing, or are not supported
            raise ValueError(f"model.lora.target_modules {lora.target_modules!r}: {e}") from e


def _load_adapter(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """`module` (the base weights of `path`) with the adapter `save` wrote there, trainable. The
    adapter is read from its safetensors file only (peft itself would fall back to a pickled
    adapter_model.bin), and it must fit the base exactly."""
    peft = _import_peft()
    if any(_LORA_KEY.search(k) for k in module.state_dict()):
        raise RuntimeError(  # transformers loaded the adapter itself after all
            f"{path}: transformers put the adapter into the base model; cannot rebuild it"
        )
    weights_file = path / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise ValueError(f"{weights_file} is missing: {path} has an adapter config but no weights")
    try:
        config = peft.PeftConfig.from_pretrained(str(path))  # the local file: no download
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path / ADAPTER_CONFIG}: not a peft adapter config ({e})") from e
    if config.peft_type != peft.PeftType.LORA:
        raise ValueError(f"{path / ADAPTER_CONFIG}: a {config.peft_type} adapter; only LoRA loads")
    config.inference_mode = False
    with torch.random.fork_rng(devices=[]), _quiet_peft():  # the init is overwritten below
        model = peft.get_peft_model(module, config)
    try:
        weights = load_file(str(weights_file), device=str(next(module.parameters()).device))
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"{weights_file}: unreadable ({e})") from e
    result = peft.set_peft_model_state_dict(model, weights)
    expected = set(peft.get_peft_model_state_dict(model))
    missing = sorted(expected - set(weights))
    unexpected = sorted(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(
            f"{weights_file} does not fit the base model in {path} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def _adapt(module: torch.nn.Module, cfg: ModelConfig, seed: int) -> torch.nn.Module:
    """Apply the run's `model.lora` and `model.gradient_checkpointing` to a built or loaded
    network."""
    if _is_peft(module) and cfg.lora is None:
        # A LoRA checkpoint as the start of full fine-tuning: its adapter becomes plain weights,
        # all of them trainable again (peft froze the base).
        module = module.merge_and_unload()
        module.requires_grad_(True)
    elif cfg.lora is not None and not _is_peft(module):
        module = _wrap_lora(module, cfg.lora, seed)
    if cfg.gradient_checkpointing:
        lm = module.get_base_model() if _is_peft(module) else module
        if not getattr(lm, "supports_gradient_checkpointing", False):
            raise ValueError(
                f"model.gradient_checkpointing: {type(lm).__name__} does not support it"
            )
        # Non-reentrant: gradients reach the adapters even though the blocks' inputs (frozen
        # embeddings) need none, with no `enable_input_require_grads` hook to rely on.
        kwargs = {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):  # its name from transformers 5.x on
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return module


class _LogprobRecorder:
    """A logits processor placed before temperature / top-k / top-p: it keeps the model's own
    log-softmax of the current step and, one step later, reads off the token that was picked,
    so only one [B, V] buffer lives at a time. It also bans the `suppressed` ids."""

    def __init__(self, suppressed: list[int]) -> None:
        self.suppressed = suppressed
        self.prev: torch.Tensor | None = None
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.picked.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = torch.log_softmax(scores.float(), -1)
        if self.suppressed:
            scores = scores.clone()
            scores[:, self.suppressed] = -math.inf
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """Log-probs [B, T] of the T new tokens (the last one read from the final step)."""
        if self.prev is not None and len(self.picked) < new_tokens.shape[1]:
            self.picked.append(self.prev.gather(-1, new_tokens[:, -1:]).squeeze(-1))
        if not self.picked:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.picked, 1).cpu()


class _eval:
    """Eval mode inside the block, the previous mode after it."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)


class _seeded:
    """Seed torch's global generator (which `model.generate` samples from) inside the block and
    restore its state after it, so a seeded call changes no one else's randomness."""

    def __init__(self, seed: int | None, device: torch.device) -> None:
        self.seed, self.device = seed, device
        self.fork: Any = None

    def __enter__(self) -> None:
        if self.seed is None:
            return
        devices = [self.device] if self.device.type == "cuda" else []
        self.fork = torch.random.fork_rng(devices=devices, device_type=self.device.type)
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self.fork is not None:
            self.fork.__exit__(*exc)
