"""The tiny backend: a Llama-shaped character transformer in plain PyTorch, with a fast sampler.

The network is the Llama architecture (RMSNorm, rotary embeddings, SwiGLU, no biases, untied
embeddings) so that `export_hf` maps it onto `transformers.LlamaForCausalLM` weight for weight;
q/k/v and gate/up are fused into one matrix each (4 matmuls a layer instead of 7 per decode
step). `rope_theta = inf` means no positional encoding at all (NoPE). `abacus` adds an embedding of
each digit's index within its number (McLeish et al. 2024), the one positional signal that
lets addition stretch to longer numbers here (docs/easy-to-hard.md); it has no Llama
equivalent, so such a model does not export.

Generation decodes every prompt x sample in one batch: prompts are left-padded, each row carries
its own positions, each prompt is prefilled once for its n samples, the KV cache is allocated
once and written in place, sampling runs on tensors, and every few steps the rows that have
stopped are dropped from the batch (or the loop ends when none is left). On CPU a decode step
runs through fused C kernels (`decode_kernels.py`) and weights packed once per call; with
`decode_dtype: bfloat16` it decodes a bf16 copy of the weights. Whole-sequence passes
(training, scoring) run causal attention with RoPE, SwiGLU and RMSNorm through fused C kernels
too (`train_kernels.py`), forward and backward, where the layout allows.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from reasonloop import distributed
from reasonloop.config import ModelConfig
from reasonloop.models import train_kernels
from reasonloop.models.base import Completion, Sampling, check_room, check_sampling
from reasonloop.models.decode_kernels import SUFFIX, Kernels, kernels, packed_linear
from reasonloop.models.tokenizer import (
    BOS_ID,
    CHARS,
    EOS_ID,
    FIRST_DIGIT_ID,
    N_USED,
    NEWLINE_ID,
    PAD_ID,
    VOCAB_SIZE,
    CharTokenizer,
)
from reasonloop.reasoner.format import STEP_SEP

if TYPE_CHECKING:
    from reasonloop.algorithms.shared_prefix import PrefixTree

RMS_EPS = 1e-5
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "reasonloop-tiny"
STOP_CHECK_EVERY = 8
"""Decode steps between "have all rows stopped?" checks (each one is a host sync)."""
PREFILL_CHUNK_ROWS = 64
"""Rows per prefill chunk (`_prefill_chunks`)."""
COMPACT_BELOW = 0.75
"""At a check, drop finished rows from the batch once no more than this share is still going."""
MAX_BATCH_ROWS = 512
"""Rows (prompts x samples) decoded together, at most."""
KV_CACHE_BYTES = 512 * 2**20
"""Fewer rows a batch when their KV cache would exceed this."""
LOGPROB_BATCH_TOKENS = 32768
"""Padded tokens per forward in `logprobs`."""
DEFAULT_SAMPLING = Sampling()
STEP_ID = NEWLINE_ID + CHARS.index(STEP_SEP)
"""The token of the compact format's step separator (`Sampling.stop_at_step` stops after it)."""


def ffn_size(cfg: ModelConfig) -> int:
    """SwiGLU hidden size: `cfg.ffn_hidden`, or the multiple of 32 nearest 8/3 * dim when it is 0."""
    if cfg.ffn_hidden:
        return cfg.ffn_hidden
    return 32 * max(1, round(8 * cfg.dim / 3 / 32))


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension: the train kernel's where it applies (float32, CPU)."""
    kern = train_kernels.kernels()
    if kern is not None and kern.takes(x, weight):
        return kern.rms_norm(x, weight, RMS_EPS)
    return F.rms_norm(x, (x.shape[-1],), weight, RMS_EPS)


def rope_tables(head_dim: int, theta: float, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin tables [length, head_dim] for the rotate-half convention of Llama.

    Llama rotates `x * cos + rotate_half(x) * sin` with rotate_half(x) = (-x2, x1); folding the
    sign into sin turns that into `x * cos + swap_halves(x) * sin_signed`, one op fewer.
    The frequencies are computed exactly as `transformers` does, so exported logits match.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.arange(length, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)


def is_digit(ids: torch.Tensor) -> torch.Tensor:
    return (ids >= FIRST_DIGIT_ID) & (ids < FIRST_DIGIT_ID + 10)


def digit_runs(ids: torch.Tensor, anchor: int = -1) -> torch.Tensor:
    """[B, T] index of each token within its run of consecutive digits (1, 2, ...); 0 for
    non-digits. Padding is not a digit, so left padding does not shift the indices. The
    `anchor` token id (if any) opens a run of its own at index 1; the digits after it go on
    from 2."""
    digit = is_digit(ids)
    anchored = ids == anchor
    t = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    # The position just before each run's first index: the anchor counts as the run's first.
    start = torch.where(digit, -1, torch.where(anchored, t - 1, t)).cummax(dim=1).values
    return torch.where(digit | anchored, t - start, 0)


def problem_index(ids: torch.Tensor) -> torch.Tensor:
    """[B, T] index of the problem each token belongs to: a newline closes its own problem."""
    newline = (ids == NEWLINE_ID).long()
    return newline.cumsum(-1) - newline


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), -1)


ATTENTION_CHUNK = 32
"""Cache slots per elementwise product in `decode_attention` (bounds its temporary)."""


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Single-query attention for N = batch x heads independent rows.

    q [N, hd]; k, v [T, N, hd] (a contiguous prefix of a time-major cache); bias [T, N].
    Returns [N, hd]. With one query per row, batched matmuls (and SDPA) spend their time on
    thousands of 1 x hd x T products; a broadcast multiply and a sum over the cache stream it
    at memory speed instead, about 2x faster here at hd 32..64.
    """
    T, scale = k.shape[0], q.shape[-1] ** -0.5
    if T <= ATTENTION_CHUNK:
        p = torch.add(bias, (k * q).sum(-1), alpha=scale).softmax(0)
        return (v * p[:, :, None]).sum(0)
    scores = torch.cat(
        [(k[i : i + ATTENTION_CHUNK] * q).sum(-1) for i in range(0, T, ATTENTION_CHUNK)]
    )
    p = torch.add(bias, scores, alpha=scale).softmax(0)[:, :, None]
    out = (v[:ATTENTION_CHUNK] * p[:ATTENTION_CHUNK]).sum(0)
    for i in range(ATTENTION_CHUNK, T, ATTENTION_CHUNK):
        out += (v[i : i + ATTENTION_CHUNK] * p[i : i + ATTENTION_CHUNK]).sum(0)
    return out


Linear = Callable[[torch.Tensor], torch.Tensor]


class Fused(NamedTuple):
    """What a decode step needs to run its layers with the fused kernels
    (`decode_kernels.py`): the kernels, and each layer's wqkv, wo, w_gate_up and w_down and the
    lm_head as `decode_kernels.packed_linear`s, packed once per `generate` call."""

    kern: Kernels
    layers: list[tuple[Linear, Linear, Linear, Linear]]
    lm_head: Linear


class Block(nn.Module):
    """Pre-norm attention + SwiGLU block.

    `forward` runs whole sequences (training, prefill); `step` decodes one token per row against
    a time-major KV cache [L, B, H, hd], written in place at slot t.
    """

    def __init__(self, dim: int, n_heads: int, ffn: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.attn_norm = nn.Parameter(torch.ones(dim))
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = nn.Parameter(torch.ones(dim))
        self.w_gate_up = nn.Linear(dim, 2 * ffn, bias=False)
        self.w_down = nn.Linear(ffn, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, T, D]; mask None means causal. A cache [L, B, H, hd] receives this sequence's
        keys and values at positions 0..T-1 (prefill). With `keep` (indices into the B * T
        positions, row-major), the output is [N, D] at those positions only: every position
        still gives its key and value, but the output projection and the feed-forward run on the
        kept rows alone."""
        B, T, D = x.shape
        h = rms_norm(x, self.attn_norm)
        qkv = self.wqkv(h).view(B, T, 3, self.n_heads, self.head_dim)
        kern = train_kernels.kernels() if mask is None and cache is None else None
        # One rope row per position (not per row and position): what the kernel reads.
        if kern is not None and kern.usable(qkv) and (rope is None or rope[0].dim() == 4):
            cos, sin = (None, None) if rope is None else (rope[0].view(T, -1), rope[1].view(T, -1))
            return self._out(x, kern.attention(qkv, cos, sin), keep)
        if rope is None:
            q, k = qkv[:, :, 0], qkv[:, :, 1]
        else:
            cos, sin = rope
            qk = qkv[:, :, :2]
            q, k = torch.addcmul(qk * cos, swap_halves(qk), sin).unbind(2)
        v = qkv[:, :, 2]
        if cache is not None:
            cache[0][:T] = k.transpose(0, 1)
            cache[1][:T] = v.transpose(0, 1)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask,
            is_causal=mask is None and T > 1,
        )
        return self._out(x, a.transpose(1, 2).reshape(B, T, D), keep)

    def _out(self, x: torch.Tensor, a: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The residual stream after the output projection of attention `a` [B, T, D] and the
        feed-forward, at the `keep` positions only when given (an index_select, whose backward is
        a cheap index_add, where a boolean mask's would be an accumulating index_put)."""
        if keep is not None:
            x, a = x.flatten(0, 1).index_select(0, keep), a.flatten(0, 1).index_select(0, keep)
        return self._ffn(x + self.wo(a))

    def step(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: tuple[torch.Tensor, torch.Tensor],
        t: int,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """One decode step. x [B, D] is the token at cache slot t; bias [>t, B*H] is 0 for keys
        to attend to and -inf for padding."""
        B, D = x.shape
        H, hd = self.n_heads, self.head_dim
        qkv = self.wqkv(F.rms_norm(x, (D,), self.attn_norm, RMS_EPS)).view(B, 3, H, hd)
        qk = qkv[:, :2]
        if rope is not None:
            qk = torch.addcmul(qk * rope[0], swap_halves(qk), rope[1])
        k_cache, v_cache = cache
        k_cache[t] = qk[:, 1]
        v_cache[t] = qkv[:, 2]
        a = decode_attention(
            qk[:, 0].reshape(B * H, hd),
            k_cache[: t + 1].view(t + 1, B * H, hd),
            v_cache[: t + 1].view(t + 1, B * H, hd),
            bias[: t + 1],
        )
        return self._ffn(x + self.wo(a.view(B, D)))

    def fused_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: tuple[torch.Tensor, torch.Tensor],
        t: int,
        bias: torch.Tensor,
        kern: Kernels,
        linears: tuple[Linear, Linear, Linear, Linear],
    ) -> torch.Tensor:
        """`step` with the fused kernels: x [B, D] is the float32 residual stream, to which
        the previous layer's output y (None for the first layer) is added here, in place; returns
        this layer's output, still to be added. rope (cos, sin) [B, hd] float32; bias [>t, B*H]
        float32; `linears` apply wqkv, wo, w_gate_up and w_down (`Fused`). Matrices and the
        cache are in the weights' dtype."""
        wqkv, wo, w_gate_up, w_down = linears
        B, D = x.shape
        H, hd = self.n_heads, self.head_dim
        dt = self.wqkv.weight.dtype
        h = torch.empty(B, D, dtype=dt)
        kern.add_rms_norm(x, y, self.attn_norm.float(), h, RMS_EPS)
        qkv = wqkv(h)
        q = torch.empty(B * H, hd, dtype=dt)
        k_cache, v_cache = cache
        kern.rope_cache(qkv.view(B, 3, H, hd), rope, q, k_cache[t], v_cache[t])
        k, v = k_cache[: t + 1].view(t + 1, B * H, hd), v_cache[: t + 1].view(t + 1, B * H, hd)
        a = kern.attention(q, k, v, bias[: t + 1])
        if a is None:  # the kernel could not allocate its scratch memory
            a = decode_attention(q, k, v, bias[: t + 1].to(dt))
        kern.add_rms_norm(x, wo(a.view(B, D)), self.ffn_norm.float(), h, RMS_EPS)
        gate_up = w_gate_up(h)
        act = torch.empty(B, gate_up.shape[1] // 2, dtype=dt)
        kern.silu_mul(gate_up, act)
        return w_down(act)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        h = rms_norm(x, self.ffn_norm)
        gu = self.w_gate_up(h)
        kern = train_kernels.kernels()
        if kern is not None and kern.takes(gu):
            return x + self.w_down(kern.swiglu(gu))
        gate, up = gu.chunk(2, -1)
        return x + self.w_down(F.silu(gate) * up)


class TinyTransformer(nn.Module):
    """The network. Parameters: embed, layers.*, norm, lm_head (rope tables are not saved)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.n_heads or (cfg.dim // cfg.n_heads) % 2:
            raise ValueError(
                f"model.dim ({cfg.dim}) must be divisible by model.n_heads ({cfg.n_heads}) "
                "into an even head size"
            )
        self.dim, self.max_seq_len = cfg.dim, cfg.max_seq_len
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.dim)
        ffn = ffn_size(cfg)
        self.layers = nn.ModuleList(Block(cfg.dim, cfg.n_heads, ffn) for _ in range(cfg.n_layers))
        self.norm = nn.Parameter(torch.ones(cfg.dim))
        self.lm_head = nn.Linear(cfg.dim, VOCAB_SIZE, bias=False)
        self.nope = math.isinf(cfg.rope_theta)
        self.abacus_max, self.abacus_offset = cfg.abacus, cfg.abacus_offset
        self.abacus_per_problem = cfg.abacus_offset_per_problem
        self.abacus_anchor = (
            CharTokenizer().encode(cfg.abacus_anchor)[0] if cfg.abacus_anchor else -1
        )
        if cfg.abacus:
            # Row 0 (non-digits) stays zero: padding_idx keeps it out of training.
            self.abacus = nn.Embedding(cfg.abacus + 1, cfg.dim, padding_idx=0)
            # Fixed: the optimiser only sees parameters that require grad (algorithms/optim.py).
            self.abacus.weight.requires_grad_(not cfg.abacus_fixed)
        self.abacus_fixed = cfg.abacus_fixed
        if not self.nope:
            cos, sin = rope_tables(cfg.dim // cfg.n_heads, cfg.rope_theta, cfg.max_seq_len)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self) -> None:
        """GPT-2 style: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)."""
        std = 0.02
        nn.init.normal_(self.embed.weight, std=std)
        nn.init.normal_(self.lm_head.weight, std=std)
        if self.abacus_max and self.abacus_fixed:
            # Orthogonal rows 1..N of norm abacus_fixed (row 0, non-digits, stays zero): no two
            # indices share a direction, so attention cannot confuse indices that never met in
            # training.
            q, _ = torch.linalg.qr(torch.randn(self.dim, self.abacus_max))
            with torch.no_grad():
                self.abacus.weight.zero_()
                self.abacus.weight[1:] = q.T * self.abacus_fixed
        elif self.abacus_max:
            nn.init.normal_(self.abacus.weight, std=std)
            with torch.no_grad():
                self.abacus.weight[0].zero_()
        for layer in self.layers:
            nn.init.normal_(layer.wqkv.weight, std=std)
            nn.init.normal_(layer.w_gate_up.weight, std=std)
            nn.init.normal_(layer.wo.weight, std=std / math.sqrt(2 * len(self.layers)))
            nn.init.normal_(layer.w_down.weight, std=std / math.sqrt(2 * len(self.layers)))

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        last_only: bool = False,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] (or [B, V] for the last position only) of whole sequences.

        positions [B, T] default to 0..T-1; mask None means causal; caches, if given, are
        filled with the keys and values of positions 0..T-1 (prefill). With `at` [B, T] (bool),
        logits [N, V] at the set positions only, in row-major order."""
        return self.lm_head(self.hidden(ids, positions, mask, caches, last_only, at=at))

    def hidden(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        last_only: bool = False,
        runs: torch.Tensor | None = None,
        problem: torch.Tensor | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final-norm hidden states [B, T, D] (or [B, D]) that `forward` projects to logits;
        a value head reads them (`algorithms/value_head.py`). Arguments as in `forward`, plus,
        for a layout where a row is not one sequence (a shared-prefix tree,
        `algorithms/shared_prefix.py`), each token's digit-run index `runs` and problem index
        `problem` [B, T] (abacus models), taken from the sequence the token belongs to.

        `at` [B, T] (bool) gives [N, D] at the set positions only. The last layer then runs its
        output projection and feed-forward on those rows alone (the others feed it keys and
        values only): with a completion-only loss, each prompt row skips three quarters of the
        last layer's products and all of the LM head's (a fifth of its whole forward and
        backward at 4 layers)."""
        if at is not None and (last_only or caches is not None):
            raise ValueError("`at` selects training positions; it takes no caches or last_only")
        x = self.embed(ids)
        if self.abacus_max:
            if runs is None:
                runs = digit_runs(ids, self.abacus_anchor)
            x = x + self.abacus(self.abacus_index(runs, ids, problem))
        rope = None
        if not self.nope:
            T = ids.shape[1]
            if positions is None:
                cos, sin = self.rope_cos[:T], self.rope_sin[:T]
            else:
                cos, sin = self.rope_cos[positions], self.rope_sin[positions]
            rope = cos[..., None, None, :], sin[..., None, None, :]  # over [B, T, 2, H, hd]
        keep = None if at is None else at.flatten().nonzero().squeeze(1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            cache = None if caches is None else caches[i]
            x = layer(x, rope, mask, cache, keep if i == last else None)
        if last_only:
            x = x[:, -1]
        return rms_norm(x, self.norm)

    def abacus_index(
        self,
        runs: torch.Tensor,
        ids: torch.Tensor | None = None,
        problem: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Digit-run indices -> abacus embedding rows; in training, shifted per sequence (per
        problem of the sequence `ids` with `abacus_offset_per_problem`; `problem` [B, T], when
        given, is each token's problem index in place of the one `ids` implies)."""
        if self.training and self.abacus_offset:
            # Under torchrun a rank holds some rows of a global batch: it draws for all of them
            # and keeps its own, so each row is shifted as a single process would shift it.
            n, rows = distributed.global_rows(runs.shape[0])
            per_problem = self.abacus_per_problem and (ids is not None or problem is not None)
            # Per problem: one draw for every possible problem (at most max_seq_len), so the
            # number of draws, and with it the RNG stream, does not depend on the batch.
            shape = (n, self.max_seq_len) if per_problem else (n,) + (1,) * (runs.dim() - 1)
            shift = torch.randint(0, self.abacus_offset + 1, shape, device=runs.device)
            if rows is not None:
                shift = shift[rows]
            if per_problem:
                if problem is None:
                    assert ids is not None
                    problem = problem_index(ids)
                shift = shift.gather(1, problem.clamp(max=self.max_seq_len - 1))
            runs = torch.where(runs > 0, runs + shift, 0)
        return runs.clamp(max=self.abacus_max)

    def step(
        self,
        tok: torch.Tensor,
        positions: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        t: int,
        bias: torch.Tensor,
        runs: torch.Tensor | None = None,
        fused: Fused | None = None,
    ) -> torch.Tensor:
        """Logits [B, V] after feeding token tok [B] at rope positions [B] and cache slot t;
        `runs` [B] is tok's index within its digit run (abacus models only). With `fused`, the
        layers run `Block.fused_step` (bias then float32), otherwise `Block.step`."""
        x = self.embed(tok)
        if self.abacus_max and runs is not None:
            x = x + self.abacus(self.abacus_index(runs))
        if fused is not None:
            x = x.float()  # the residual stream stays float32 whatever the weights' dtype
            rope = None
            if not self.nope:
                rope = self.rope_cos[positions].float(), self.rope_sin[positions].float()
            y = None
            for layer, cache, linears in zip(self.layers, caches, fused.layers, strict=True):
                y = layer.fused_step(x, y, rope, cache, t, bias, fused.kern, linears)
            h = torch.empty_like(x, dtype=self.lm_head.weight.dtype)
            fused.kern.add_rms_norm(x, y, self.norm.float(), h, RMS_EPS)
            return fused.lm_head(h)
        rope = None
        if not self.nope:
            rope = self.rope_cos[positions][:, None, None], self.rope_sin[positions][:, None, None]
        for layer, cache in zip(self.layers, caches, strict=True):
            x = layer.step(x, rope, cache, t, bias)
        return self.lm_head(F.rms_norm(x, (self.dim,), self.norm, RMS_EPS))


def _padding_mask(key_ok: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask [B, 1, T, T]: causal, only real keys, and every query sees itself
    (so a padding query has one key, never an all-masked row whose softmax would be NaN)."""
    T = key_ok.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=key_ok.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=key_ok.device)
    return ((causal & key_ok[:, None, :]) | eye)[:, None]


def _atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary sibling directory with `write`, then rename it to `path`, so a reader (or
    a crash) never sees a half-written checkpoint; an existing `path` is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _config_to_json(cfg: ModelConfig) -> dict:
    d = cfg.model_dump()
    if math.isinf(d["rope_theta"]):
        d["rope_theta"] = "inf"  # strict JSON has no infinity; pydantic parses the string back
    return d


class TinyModel:
    """The tiny backend behind `models.base.LanguageModel`."""

    def __init__(self, config: ModelConfig, module: TinyTransformer) -> None:
        self.config = config
        self.module = module
        self.tokenizer = CharTokenizer()
        self._decode_copy: tuple[tuple, TinyTransformer] | None = None
        """The `decode_dtype` copy of the weights and the state it was made from."""

    # ----------------------------------------------------------------- building, saving, loading

    @staticmethod
    def _check_config(cfg: ModelConfig) -> None:
        if cfg.backend != "tiny":
            raise ValueError(f"model.backend is {cfg.backend!r}; TinyModel needs 'tiny'")
        if cfg.dtype != "float32":
            raise ValueError(
                f"model.dtype is {cfg.dtype!r}; the tiny backend trains in float32 only "
                "(model.decode_dtype: bfloat16 makes it generate in bf16)"
            )

    @classmethod
    def create(cls, cfg: ModelConfig, seed: int) -> TinyModel:
        """A freshly initialised model; the same (cfg, seed) gives the same weights."""
        cls._check_config(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = TinyTransformer(cfg)
            module.init_weights()
        return cls(cfg, module.to(cfg.device))

    def save(self, path: str | Path) -> None:
        """Write model.safetensors and config.json into directory `path` (atomically)."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.module.state_dict().items()}
        meta = {
            "format": FORMAT,
            "version": 1,
            "vocab_size": VOCAB_SIZE,
            "model": _config_to_json(self.config),
        }

        def write(tmp: Path) -> None:
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

        _atomic_write_dir(path, write)

    @classmethod
    def load(cls, path: str | Path) -> TinyModel:
        """Load a directory written by `save`. Errors name the path and what is wrong."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tiny model directory {path} does not exist")
        cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
        for f in (cfg_file, weights_file):
            if not f.is_file():
                raise FileNotFoundError(
                    f"{f} is missing: not a tiny model directory written by save()"
                )
        try:
            meta = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{cfg_file} is not valid JSON: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
            raise ValueError(
                f"{cfg_file}: expected a JSON object with format {FORMAT!r} and a 'model' section"
            )
        if meta.get("vocab_size") != VOCAB_SIZE:
            raise ValueError(f"{cfg_file}: vocab_size {meta.get('vocab_size')} != {VOCAB_SIZE}")
        try:
            cfg = ModelConfig.model_validate(meta["model"])
            cls._check_config(cfg)
            module = TinyTransformer(cfg)
        except (ValidationError, ValueError) as e:
            raise ValueError(f"{cfg_file}: invalid model config: {e}") from e
        try:
            state = load_file(str(weights_file))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{weights_file} is not a readable safetensors file: {e}") from e
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{weights_file} does not match {cfg_file}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for k, v in expected.items():
            if state[k].shape != v.shape:
                raise ValueError(
                    f"{weights_file}: tensor {k} has shape {tuple(state[k].shape)}, "
                    f"config {cfg_file} expects {tuple(v.shape)}"
                )
        module.load_state_dict({k: v.float() for k, v in state.items()})
        return cls(cfg, module.to(cfg.device))

    def copy(self) -> TinyModel:
        """An independent deep copy (weights, config)."""
        return TinyModel(self.config.model_copy(), copy.deepcopy(self.module))

    def export_hf(self, path: str | Path) -> None:
        """Write a `transformers.LlamaForCausalLM` directory with the same logits."""
        from reasonloop.models.export import export_hf

        export_hf(self, path)

    @property
    def device(self) -> torch.device:
        return self.module.embed.weight.device

    # ---------------------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V]. A right-padded mask (or none) takes the causal fast path; any other
        mask (left padding) gives each row positions counted over its real tokens. With `at`
        [B, T] (bool), logits [N, V] at the set positions only (`TinyTransformer.hidden`)."""
        return self.module(input_ids, *self._layout(input_ids, attention_mask), at=at)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, D] of a padded batch, laid out as `forward` does (the
        input of a value head)."""
        return self.module.hidden(input_ids, *self._layout(input_ids, attention_mask))

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] of final-norm hidden states (`hidden_states`' output)."""
        return self.module.lm_head(hidden)

    def forward_tree(self, tree: PrefixTree) -> torch.Tensor:
        """Logits [R, T, V] of a shared-prefix batch (`algorithms/shared_prefix.py`): each
        token at its own sequence's position, with its own sequence's digit-run and problem
        indices (abacus models)."""
        if int(tree.positions.max()) >= self.config.max_seq_len:
            raise ValueError(
                f"a sequence of {int(tree.positions.max()) + 1} tokens exceeds model.max_seq_len "
                f"{self.config.max_seq_len}"
            )
        device, m = self.device, self.module
        runs = problem = None
        if m.abacus_max:
            rows, source = tree.rows.to(device), tree.source.to(device)
            runs = digit_runs(rows, m.abacus_anchor).flatten()[source]
            problem = problem_index(rows).flatten()[source]
        return self.lm_logits(
            m.hidden(
                tree.inputs.to(device),
                tree.positions.to(device),
                tree.mask.to(device),
                runs=runs,
                problem=problem,
            )
        )

    def _layout(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(positions, attention mask) for the module; (None, None) is the causal fast path."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {input_ids.shape[1]} tokens exceeds model.max_seq_len {self.config.max_seq_len}"
            )
        if attention_mask is None:
            return None, None
        m = attention_mask.bool()
        if bool((m[:, 1:] <= m[:, :-1]).all()):
            return None, None  # right padding: causal attention never sees the pads
        positions = (m.long().cumsum(-1) - 1).clamp(min=0)
        return positions, _padding_mask(m)

    # -------------------------------------------------------------------------- log-probs

    def _encode_prompt(self, prompt: str, i: int) -> list[int]:
        try:
            return [BOS_ID, *self.tokenizer.encode(prompt)]
        except ValueError as e:
            raise ValueError(f"prompt {i}: {e}") from None

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[torch.Tensor]:
        """Log-probability of each completion token given its prompt: one float32 CPU tensor each.

        The completion is scored exactly as given; append the stop character ("\\n") to score
        the terminator too (that is what `Completion.logprob` sums). No gradient."""
        # Cloned outside inference mode: inference tensors could not enter a later autograd
        # graph (a DPO or KL loss that uses these as constants).
        return [t.clone() for t in self._logprobs(prompts, completions)]

    @torch.inference_mode()
    def _logprobs(self, prompts: list[str], completions: list[str]) -> list[torch.Tensor]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        seqs = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            pid = self._encode_prompt(p, i)
            try:
                cid = self.tokenizer.encode(c)
            except ValueError as e:
                raise ValueError(f"completion {i}: {e}") from None
            if len(pid) + len(cid) - 1 > self.config.max_seq_len:
                raise ValueError(
                    f"prompt {i} + completion is {len(pid) + len(cid)} tokens; model.max_seq_len is "
                    f"{self.config.max_seq_len}"
                )
            seqs.append((pid, cid))
        out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda j: len(seqs[j][0]) + len(seqs[j][1]))
        was_training = self.module.training
        self.module.eval()
        try:
            start = 0
            while start < len(order):
                T = len(seqs[order[start]][0]) + len(seqs[order[start]][1]) - 1
                end = start + 1
                while end < len(order):  # sorted ascending: the last row sets the padded width
                    Tn = len(seqs[order[end]][0]) + len(seqs[order[end]][1]) - 1
                    if Tn * (end - start + 1) > LOGPROB_BATCH_TOKENS:
                        break
                    T, end = Tn, end + 1
                rows = order[start:end]
                T = max(T, 1)
                ids = torch.full((len(rows), T + 1), PAD_ID, dtype=torch.long)
                for r, j in enumerate(rows):
                    full = seqs[j][0] + seqs[j][1]
                    ids[r, : len(full)] = torch.tensor(full)
                ids = ids.to(self.device)
                logp = torch.log_softmax(self.module(ids[:, :-1]).float(), -1)
                logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()
                for r, j in enumerate(rows):
                    p_len, c_len = len(seqs[j][0]), len(seqs[j][1])
                    out[j] = logp[r, p_len - 1 : p_len - 1 + c_len]
                start = end
        finally:
            self.module.train(was_training)
        return out

    # ---------------------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(
        self, prompts: list[str], n: int = 1, sampling: Sampling = DEFAULT_SAMPLING
    ) -> list[list[Completion]]:
        """n completions per prompt, all decoded in batches of up to MAX_BATCH_ROWS rows.

        A completion ends at eos, at "\\n" when `sampling.stop_at_newline`, right after ";" (kept
        in the text) when `sampling.stop_at_step`, after
        `max_new_tokens`, or when prompt + completion reach `max_seq_len`. `Completion.text`
        excludes the stop character; `n_tokens` and `logprob` include it (logprob is the model's
        own log-probability, temperature 1, whatever the sampling settings)."""
        check_sampling(sampling, n)
        encoded = [self._encode_prompt(p, i) for i, p in enumerate(prompts)]
        check_room(encoded, self.config.max_seq_len, "model.max_seq_len")
        results: list[list[Completion]] = [[] for _ in prompts]
        if not prompts:
            return results
        generator = torch.Generator(device=self.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        # Similar lengths together: less padding, and each batch stops as soon as its rows do.
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        row_bytes = (
            8
            * self.config.n_layers
            * self.config.dim
            * (len(encoded[order[-1]]) + sampling.max_new_tokens)
        )
        per_batch = max(1, min(MAX_BATCH_ROWS, KV_CACHE_BYTES // row_bytes) // n)
        was_training = self.module.training
        self.module.eval()
        module = self._decode_module()
        fused = _fuse(module, self.device, min(len(order), per_batch) * n)
        try:
            for b in range(0, len(order), per_batch):
                idx = order[b : b + per_batch]
                batch = [encoded[i] for i in idx]
                comps = self._decode(module, fused, batch, n, sampling, generator)
                for k, i in enumerate(idx):
                    results[i] = comps[k * n : (k + 1) * n]
        finally:
            self.module.train(was_training)
        return results

    def _decode_module(self) -> TinyTransformer:
        """The module that decodes: the model's own, or a copy in `decode_dtype`, made again only
        when the weights have changed since the last one. An optimiser step, `load_state_dict` or
        any in-place torch op bumps a parameter's version counter, and a swapped parameter or
        module has a new identity; a write past autograd (through `.data`, or a collective) must
        call `torch.autograd.graph.increment_version`, as `distributed.broadcast_module` does.
        Why: step search and MCTS call `generate` once per node, and the copy cost a quarter of
        such a call (4 of 29 ms at dim 128, 33 of 186 ms at dim 512 x 8 layers)."""
        if self.config.decode_dtype == "float32":
            return self.module
        try:
            key: tuple | None = (id(self.module),) + tuple(
                (id(t), t.data_ptr(), t._version) for t in self.module.parameters()
            )
        except RuntimeError:  # weights made under inference mode keep no version: copy each time
            key = None
        if key is not None and self._decode_copy is not None and self._decode_copy[0] == key:
            return self._decode_copy[1]
        module = copy.deepcopy(self.module).to(getattr(torch, self.config.decode_dtype))
        self._decode_copy = None if key is None else (key, module)
        return module

    def _prefill(
        self,
        ids: torch.Tensor,
        lens: list[int],
        positions: torch.Tensor | None,
        mask: torch.Tensor | None,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Run the left-padded prompts ids [B, P] through the model, writing their keys and
        values into caches [>=P, B, H, hd] (slots 0..P-1); returns the last position's logits
        [B, V]. Rows go in chunks of similar length (`_prefill_chunks`), each cut to its own
        longest prompt: the slots left of the cut are padding, zeroed (never attended to, but
        the torch-ops decode multiplies them by 0). For a bf16 decode, the float32 module runs
        under autocast: bf16 matrix products, float32 elementwise ops (on CPU these cost more
        in bf16 than in float32); the cache takes the keys and values in its own dtype."""
        P = ids.shape[1]
        autocast = (
            torch.autocast(ids.device.type, dtype=dtype)
            if dtype != torch.float32
            else contextlib.nullcontext()
        )
        out = []
        for r0, r1 in _prefill_chunks(lens):
            cut = P - max(lens[r0:r1])
            views = [(k[cut:P, r0:r1], v[cut:P, r0:r1]) for k, v in caches]
            if cut:
                for k, v in caches:
                    k[:cut, r0:r1].zero_()
                    v[:cut, r0:r1].zero_()
            with autocast:
                out.append(
                    self.module(
                        ids[r0:r1, cut:],
                        None if positions is None else positions[r0:r1, cut:],
                        None if mask is None else mask[r0:r1, :, cut:, cut:],
                        views,
                        last_only=True,
                    )
                )
        return out[0] if len(out) == 1 else torch.cat(out)

    def _decode(
        self,
        module: TinyTransformer,
        fused: Fused | None,
        encoded: list[list[int]],
        n: int,
        sampling: Sampling,
        generator: torch.Generator,
    ) -> list[Completion]:
        """Completions for rows prompt-major (prompt 0's n samples first), decoded by `module`
        (the model's own, or a copy in `decode_dtype`), through `fused` when given."""
        dev, cfg = self.device, self.config
        dtype = module.lm_head.weight.dtype
        lens = [len(e) for e in encoded]
        budgets = [min(sampling.max_new_tokens, cfg.max_seq_len - L) for L in lens]
        steps = max(budgets)
        if steps <= 0:
            return [Completion("", 0, 0.0, stopped=False) for _ in range(len(encoded) * n)]
        B0, B, P = len(encoded), len(encoded) * n, max(lens)
        ids = torch.full((B0, P), PAD_ID, dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, P - len(e) :] = torch.tensor(e)
        ids = ids.to(dev)
        H, hd = cfg.n_heads, cfg.dim // cfg.n_heads
        L = P + steps - 1  # the last sampled token is never fed back
        caches = [
            (
                torch.empty(L, B, H, hd, dtype=dtype, device=dev),
                torch.empty(L, B, H, hd, dtype=dtype, device=dev),
            )
            for _ in module.layers
        ]
        lens_t = torch.tensor(lens, device=dev)
        key_ok = torch.arange(P, device=dev)[None, :] >= (P - lens_t)[:, None]  # [B0, P]
        positions, prefill_mask = None, None
        if min(lens) != P:
            positions = (torch.arange(P, device=dev)[None, :] - (P - lens_t)[:, None]).clamp(min=0)
            prefill_mask = _padding_mask(key_ok)

        # Prefill each distinct prompt once, then fan its cache out to its n samples.
        if n == 1:
            logits = self._prefill(ids, lens, positions, prefill_mask, caches, dtype)
        else:
            small = [
                (
                    torch.empty(P, B0, H, hd, dtype=dtype, device=dev),
                    torch.empty(P, B0, H, hd, dtype=dtype, device=dev),
                )
                for _ in module.layers
            ]
            logits = self._prefill(ids, lens, positions, prefill_mask, small, dtype)
            for big, sm in zip(caches, small, strict=True):
                for c, c_small in zip(big, sm, strict=True):
                    c.view(L, B0, n, H, hd)[:P] = c_small[:, :, None]
            logits = logits.repeat_interleave(n, 0)

        # Additive attention bias [slot, row x head]: -inf on the left padding, 0 elsewhere.
        bias = torch.zeros(L, B, device=dev, dtype=torch.float32 if fused else dtype)
        bias[:P].masked_fill_(~key_ok.repeat_interleave(n, 0).T, -math.inf)
        bias = bias.repeat_interleave(H, 1)
        next_pos = lens_t.repeat_interleave(n, 0)  # rope position of the token sampled at step 0
        # Digit-run index of each row's last prompt token, carried on as tokens are sampled.
        runs = (
            digit_runs(ids, module.abacus_anchor)[:, -1].repeat_interleave(n, 0)
            if module.abacus_max
            else None
        )
        budget_t = torch.tensor(budgets, device=dev).repeat_interleave(n, 0)
        stop_ids = [EOS_ID, NEWLINE_ID] if sampling.stop_at_newline else [EOS_ID]
        if sampling.stop_at_step:
            stop_ids.append(STEP_ID)
        stop_t = torch.tensor(stop_ids, device=dev)
        # Never sample pad, bos or the unused ids.
        allowed = torch.zeros(VOCAB_SIZE, device=dev)
        allowed[[PAD_ID, BOS_ID]] = -math.inf
        allowed[N_USED:] = -math.inf
        tokens = torch.full((B, steps), PAD_ID, dtype=torch.long, device=dev)
        logps = torch.zeros(B, steps, device=dev)
        finished = torch.zeros(B, dtype=torch.bool, device=dev)
        rows = None  # after a compaction: the original row of each row still decoding
        max_pos = cfg.max_seq_len - 1
        run = 0
        for s in range(steps):
            tok, lp = _pick(logits, allowed, sampling, generator)
            if rows is None:
                tokens[:, s], logps[:, s] = tok, lp
            else:
                tokens[rows, s], logps[rows, s] = tok, lp
            run = s + 1
            if run == steps:
                break
            finished |= torch.isin(tok, stop_t) | (budget_t <= run)
            if run % STOP_CHECK_EVERY == 0:
                alive = (~finished).nonzero().squeeze(1)
                if len(alive) == 0:
                    break
                if len(alive) <= COMPACT_BELOW * len(finished) and steps - run > STOP_CHECK_EVERY:
                    # Drop finished rows: later steps cost in proportion to the rows left.
                    caches = [_keep_rows(k, v, alive, P + s) for k, v in caches]
                    b_now = len(finished)
                    bias = bias.view(L, b_now, H)[:, alive].reshape(L, len(alive) * H)
                    rows = alive if rows is None else rows[alive]
                    tok, next_pos, budget_t = tok[alive], next_pos[alive], budget_t[alive]
                    finished = finished[alive]
                    runs = runs[alive] if runs is not None else None
            # Rows past their budget keep decoding garbage (discarded); clamp keeps rope in range.
            if runs is not None:
                runs = torch.where(is_digit(tok), runs + 1, (tok == module.abacus_anchor).long())
            logits = module.step(
                tok, (next_pos + s).clamp(max=max_pos), caches, P + s, bias, runs, fused
            )
        return _completions(
            tokens[:, :run].tolist(),
            logps[:, :run].tolist(),
            budgets,
            n,
            stop_ids,
            self.tokenizer,
            float32=dtype == torch.float32,
        )


def _fuse(module: TinyTransformer, device: torch.device, rows: int) -> Fused | None:
    """The fused decode path for `module` (weights packed for batches of about `rows` rows), or
    None where the kernels do not run (not CPU, an unsupported dtype, no kernels built)."""
    dtype = module.lm_head.weight.dtype
    kern = kernels() if device.type == "cpu" and dtype in SUFFIX else None
    if kern is None:
        return None
    blocks = [
        tuple(
            packed_linear(m.weight, rows)
            for m in (block.wqkv, block.wo, block.w_gate_up, block.w_down)
        )
        for block in module.layers
    ]
    return Fused(kern, blocks, packed_linear(module.lm_head.weight, rows))


def _prefill_chunks(lens: list[int]) -> list[tuple[int, int]]:
    """Row ranges [r0, r1) to prefill apart: runs of rows in ascending length order, about
    PREFILL_CHUNK_ROWS each, so that each is padded only to its own longest prompt (generate
    sorts a batch's rows by length). Unsorted rows: one range."""
    B = len(lens)
    if B <= PREFILL_CHUNK_ROWS or any(a > b for a, b in itertools.pairwise(lens)):
        return [(0, B)]
    k = -(-B // PREFILL_CHUNK_ROWS)
    bounds = [round(i * B / k) for i in range(k + 1)]
    return list(itertools.pairwise(bounds))


def _keep_rows(
    k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, filled: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """New [L, len(keep), H, hd] caches holding the first `filled` slots of rows `keep`."""
    out = []
    for c in (k, v):
        new = torch.empty(c.shape[0], len(keep), *c.shape[2:], dtype=c.dtype, device=c.device)
        new[:filled] = c[:filled, keep]
        out.append(new)
    return out[0], out[1]


def _pick(
    logits: torch.Tensor, allowed: torch.Tensor, sampling: Sampling, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token [B] and its log-probability under the model (temperature 1) [B]."""
    logits = logits.float()
    z = logits + allowed
    if sampling.temperature == 0:
        tok = z.argmax(-1)
    else:
        z = z / sampling.temperature
        if 0 < sampling.top_k < z.shape[-1]:
            kth = z.topk(sampling.top_k, -1).values[:, -1:]
            z = z.masked_fill(z < kth, -math.inf)
        if sampling.top_p < 1.0:
            sorted_z, idx = z.sort(-1, descending=True)
            p = sorted_z.softmax(-1)
            # Drop a token when the mass before it already reaches top_p (the best always stays).
            drop = (p.cumsum(-1) - p) >= sampling.top_p
            z = z.scatter(-1, idx, sorted_z.masked_fill(drop, -math.inf))
        tok = _sample(z.softmax(-1), generator)
    lp = torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(1)
    return tok, lp


def _sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row by inverting the CDF: B uniforms instead of multinomial's B x V
    exponentials. `right=True` never lands on a zero-probability token; the rare draw that
    rounding pushes past the last token falls back to the row's most likely one."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)
    bad = probs.gather(-1, tok) == 0
    return torch.where(bad, probs.argmax(-1, keepdim=True), tok).squeeze(1)


def _completions(
    tokens: list[list[int]],
    logps: list[list[float]],
    budgets: list[int],
    n: int,
    stop_ids: list[int],
    tokenizer: CharTokenizer,
    float32: bool = True,
) -> list[Completion]:
    out = []
    for r, (row, lps) in enumerate(zip(tokens, logps, strict=True)):
        limit = min(budgets[r // n], len(row))
        end, count, stopped, newline = limit, limit, False, False
        for t in range(limit):
            if row[t] in stop_ids:
                # A step separator stays in the text: the next step is appended right after it.
                end, count, stopped = (t + 1 if row[t] == STEP_ID else t), t + 1, True
                newline = row[t] == NEWLINE_ID
                break
        text = tokenizer.decode(row[:end])
        # Per-token log-probs only where they are those of text + "\n", as training encodes it,
        # and computed as training computes them (float32).
        per_token = tuple(lps[:count]) if newline and float32 else None
        out.append(Completion(text, count, float(sum(lps[:count])), stopped, per_token))
    return out
