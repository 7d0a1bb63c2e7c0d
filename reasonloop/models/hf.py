"""The hf backend: any `transformers` causal LM behind `models.base.LanguageModel`.

A model comes from a local directory (`ModelConfig.path`; nothing is ever downloaded) or is
built fresh from a `transformers` config dict (`ModelConfig.hf_config`). The tokenizer is the
directory's own when it has one; otherwise the tiny backend's character tokenizer, so a tiny
model exported with `TinyModel.export_hf` loads here and behaves the same.

Sequences follow one convention on both tokenizers: a prompt is `[bos] + encode(prompt)` (a
tokenizer without bos uses its eos there, as GPT-2 does) and a completion is `encode(text)`
right after it, with no special tokens; `encode_prompt` is the one place to change that (a
chat template would go there). Generation uses `model.generate` in batches of left-padded
prompts; the log-probability of each sampled token is recorded on the way (under the model
itself, temperature 1), without keeping the logits of every step.
"""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path
from typing import Any

import torch

from reasonloop.config import ModelConfig
from reasonloop.models.base import Completion, Sampling, check_room, check_sampling
from reasonloop.models.tiny import _atomic_write_dir
from reasonloop.models.tokenizer import N_USED, NEWLINE_ID, CharTokenizer

MAX_BATCH_ROWS = 256
"""Rows (prompts x samples) generated together; bounds the KV cache's memory."""
LOGPROB_BATCH_TOKENS = 16384
"""Padded tokens per forward in `logprobs`."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SAMPLING = Sampling()


class HFTokenizer:
    """A `transformers` tokenizer behind `models.base.Tokenizer` (no special tokens added)."""

    def __init__(self, hf: Any) -> None:
        if hf.eos_token_id is None:
            raise ValueError(f"tokenizer {hf.name_or_path!r} has no eos token")
        self.hf = hf
        self.vocab_size: int = len(hf)
        self.eos_id: int = hf.eos_token_id
        self.bos_id: int = hf.bos_token_id if hf.bos_token_id is not None else self.eos_id
        self.pad_id: int = hf.pad_token_id if hf.pad_token_id is not None else self.eos_id
        self._newline_ids: list[int] | None = None

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

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
        self.tokenizer = tokenizer
        self.config = config
        vocab = module.get_output_embeddings().weight.shape[0]
        if isinstance(tokenizer, CharTokenizer) and vocab < tokenizer.vocab_size:
            raise ValueError(
                f"model vocabulary is {vocab} tokens; the character tokenizer needs {tokenizer.vocab_size}"
            )
        self._takes_positions = "position_ids" in inspect.signature(module.forward).parameters

    # ----------------------------------------------------------------- building, saving, loading

    @classmethod
    def from_config(cls, cfg: ModelConfig, seed: int) -> HFModel:
        """Load `cfg.path`, or build a fresh model from `cfg.hf_config` (same seed, same weights)."""
        if cfg.backend != "hf":
            raise ValueError(f"model.backend is {cfg.backend!r}; HFModel needs 'hf'")
        if cfg.path is not None and cfg.hf_config is not None:
            raise ValueError("model.path and model.hf_config are exclusive: load one or build one")
        if cfg.path is not None:
            return cls.load(cfg.path, dtype=cfg.dtype, device=cfg.device)
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
            module = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
        module = module.to(device=cfg.device, dtype=DTYPES[cfg.dtype])
        module.train()  # like the tiny backend; generate and logprobs switch to eval themselves
        return cls(module, tok, cfg.model_copy())

    @classmethod
    def load(cls, path: str | Path, dtype: str = "float32", device: str = "cpu") -> HFModel:
        """A local model directory (config.json and weights; tokenizer files optional)."""
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

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per checkpoint load is noise in a round's log
        try:
            module = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=DTYPES[dtype]
            )
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot load a causal LM from {path}: {e}") from e
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        tokenizer: Tokenizer
        if any((path / f).is_file() for f in TOKENIZER_FILES):
            tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
        else:
            tokenizer = CharTokenizer()
        module = module.to(device)
        module.train()
        cfg = ModelConfig(backend="hf", path=str(path), dtype=dtype, device=device)
        return cls(module, tokenizer, cfg)

    def save(self, path: str | Path) -> None:
        """Write config, safetensors weights and tokenizer (if not the character one) atomically."""

        def write(tmp: Path) -> None:
            self.module.save_pretrained(tmp)
            if isinstance(self.tokenizer, HFTokenizer):
                self.tokenizer.hf.save_pretrained(tmp)

        _atomic_write_dir(path, write)

    def copy(self) -> HFModel:
        """An independent deep copy of the weights (the tokenizer is shared: it is immutable)."""
        return HFModel(copy.deepcopy(self.module), self.tokenizer, self.config.model_copy())

    @property
    def device(self) -> torch.device:
        return self.module.get_output_embeddings().weight.device

    # ---------------------------------------------------------------------------- forward

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt ids as generation and scoring see them: bos, then the text."""
        return [self.tokenizer.bos_id, *self.tokenizer.encode(prompt)]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B, T, V]. With a mask, positions count real tokens only, so left and right
        padding both work (transformers' forward alone counts pads on the left)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {tuple(input_ids.shape)}")
        kwargs: dict[str, Any] = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            if self._takes_positions:
                kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.module(input_ids=input_ids, use_cache=False, **kwargs).logits

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
        stop token. The same `sampling.seed` gives the same completions."""
        check_sampling(sampling, n)
        encoded = [self.encode_prompt(p) for p in prompts]
        limit = getattr(self.module.config, "max_position_embeddings", None)
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
        saved = self.module.generation_config
        self.module.generation_config = GenerationConfig()
        try:
            out = self.module.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=gen,
                logits_processor=LogitsProcessorList([recorder]),
            )
        finally:
            self.module.generation_config = saved
        new = out[:, P:]
        rows = list(zip(new.tolist(), recorder.finish(new).tolist(), strict=True))
        return [r for r in rows for _ in range(n)] if greedy else rows

    def _completion(
        self, tokens: list[int], logps: list[float], budget: int, eos: set[int], stops: set[int]
    ) -> Completion:
        limit = min(budget, len(tokens))
        for t in range(limit):
            if tokens[t] in stops:
                if tokens[t] in eos:
                    text = self.tokenizer.decode(tokens[:t])
                else:  # a newline token, possibly with text before the newline
                    text = self.tokenizer.decode(tokens[: t + 1]).split("\n", 1)[0]
                return Completion(text, t + 1, float(sum(logps[: t + 1])))
        return Completion(self.tokenizer.decode(tokens[:limit]), limit, float(sum(logps[:limit])))

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_id}
        configured = getattr(self.module.generation_config, "eos_token_id", None)
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
        vocab = self.module.get_output_embeddings().weight.shape[0]
        tok = self.tokenizer
        if isinstance(tok, CharTokenizer):
            return sorted({tok.pad_id, tok.bos_id, *range(N_USED, vocab)})
        ids = {i for i in (tok.pad_id, tok.bos_id) if i != tok.eos_id}
        return sorted(ids | set(range(tok.vocab_size, vocab)))


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
