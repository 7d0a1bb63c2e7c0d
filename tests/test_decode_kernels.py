"""The fused C decode kernels against the torch ops they replace, and bf16 decoding."""

from __future__ import annotations

import copy
import math
import random
import stat

import pytest
import torch
import torch.nn.functional as F

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ModelConfig, TrainConfig
from reasonloop.models import decode_kernels, tiny
from reasonloop.models.base import Sampling
from reasonloop.models.hf import HFModel
from reasonloop.models.tiny import TinyModel, decode_attention, rope_tables, swap_halves
from reasonloop.types import SFTExample

KERNELS = decode_kernels.kernels()
needs_kernels = pytest.mark.skipif(
    KERNELS is None, reason="decode kernels unavailable here (no C compiler, or not Linux)"
)
BF16 = dict(atol=2e-2, rtol=2e-2)  # bf16 keeps 8 bits of mantissa: results round at ~0.4%


def _bf16_round(x: torch.Tensor) -> torch.Tensor:
    return x.bfloat16().float()


@needs_kernels
@pytest.mark.parametrize("hd", [32, 64, 24])  # the two unrolled sizes and the generic path
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_matches_torch(hd, dtype):
    g = torch.Generator().manual_seed(hd)
    N = 1000  # not a multiple of the kernel's block of rows
    for T in (1, 7, 90):
        q, k, v = (
            torch.randn(*s, generator=g).to(dtype) for s in ((N, hd), (T, N, hd), (T, N, hd))
        )
        bias = torch.zeros(T, N)
        pad = torch.rand(T, N, generator=g) < 0.3
        pad[-1] = False  # every row sees at least its own key
        bias[pad] = -math.inf
        # Padding holds whatever was there: it must get weight 0, even when not finite.
        k[pad], v[pad] = float("nan"), float("inf")
        want = decode_attention(
            q.float(), k.float().nan_to_num(0), v.float().nan_to_num(0, 0), bias
        )
        got = KERNELS.attention(q, k, v, bias)
        assert got.dtype == dtype and torch.isfinite(got).all()
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else BF16
        torch.testing.assert_close(got.float(), want, **tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_rope_and_swiglu_match_torch(dtype):
    g = torch.Generator().manual_seed(0)
    B, H, hd, D, Fh = 37, 4, 16, 64, 96
    x = torch.randn(B, D, generator=g)
    y = torch.randn(B, D, generator=g).to(dtype)
    w = torch.rand(D, generator=g) + 0.5
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else BF16
    for residual in (None, y):
        want_x = x + (0 if residual is None else residual.float())
        want_h = F.rms_norm(want_x, (D,), w, tiny.RMS_EPS)
        got_x, h = x.clone(), torch.empty(B, D, dtype=dtype)
        KERNELS.add_rms_norm(got_x, residual, w, h, tiny.RMS_EPS)
        torch.testing.assert_close(got_x, want_x, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(h.float(), want_h, **tol)

    qkv = torch.randn(B, 3, H, hd, generator=g).to(dtype)
    cos, sin = rope_tables(hd, 10000.0, 50)
    pos = torch.randint(0, 50, (B,), generator=g)
    for rope in (None, (cos[pos], sin[pos])):
        q, k, v = (torch.empty(B, H, hd, dtype=dtype) for _ in range(3))
        KERNELS.rope_cache(qkv, rope, q, k, v)
        want = qkv.float()[:, :2]
        if rope is not None:
            want = want * rope[0][:, None, None] + swap_halves(want) * rope[1][:, None, None]
        torch.testing.assert_close(q.float(), want[:, 0], **tol)
        torch.testing.assert_close(k.float(), want[:, 1], **tol)
        assert torch.equal(v, qkv[:, 2])

    # exp over the whole float range: overflow, underflow and the sign all matter for silu
    gate = torch.cat([torch.linspace(-120, 120, 2001), torch.randn(B * Fh * 2 - 2001, generator=g)])
    gu = gate[torch.randperm(len(gate), generator=g)].view(B, 2 * Fh).to(dtype)
    act = torch.empty(B, Fh, dtype=dtype)
    KERNELS.silu_mul(gu, act)
    want = F.silu(gu.float()[:, :Fh]) * gu.float()[:, Fh:]
    torch.testing.assert_close(act.float(), want, **tol)


def _trained(rope_theta: float = 10000.0) -> TinyModel:
    """A model trained for a few seconds to reverse 3-letter words: confident logits."""
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefgh", k=3)) for _ in range(800)]
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=2, max_seq_len=48, rope_theta=rope_theta)
    model = TinyModel.create(cfg, seed=0)
    train = TrainConfig(steps=250, batch_size=32, lr=5e-3, warmup_steps=10)
    train_sft(model, [SFTExample(w + "=", w[::-1]) for w in words], train, seed=0)
    return model


@pytest.fixture(scope="module")
def reverser() -> TinyModel:
    return _trained()


@needs_kernels
@pytest.mark.parametrize("theta", [10000.0, math.inf])
def test_fused_generate_equals_torch_ops(monkeypatch, theta):
    """The loop's decode with the kernels = with torch ops, float32: the same greedy text and
    the same log-probs, for several samples per prompt and rows that stop early (compaction)."""
    model = _trained(theta)
    rng = random.Random(1)
    prompts = ["".join(rng.choices("abcdefgh", k=rng.randint(1, 6))) + "=" for _ in range(70)]
    for sampling in (
        Sampling(0.0, max_new_tokens=8, stop_at_newline=True),
        Sampling(1.0, max_new_tokens=8, stop_at_newline=True, seed=3),
    ):
        fused = model.generate(prompts, 3, sampling)
        monkeypatch.setattr(tiny, "kernels", lambda: None)
        plain = model.generate(prompts, 3, sampling)
        monkeypatch.undo()
        for a_row, b_row in zip(fused, plain, strict=True):
            for a, b in zip(a_row, b_row, strict=True):
                assert (a.text, a.n_tokens, a.stopped) == (b.text, b.n_tokens, b.stopped)
                assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
                assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_decoding_agrees_with_float32(reverser, monkeypatch, fused):
    """decode_dtype bfloat16 (with the kernels or torch ops): a confident model gives the
    float32 model's greedy answers; log-probs are the bf16 model's, and no per-token ones."""
    if fused and KERNELS is None:
        pytest.skip("decode kernels unavailable here")
    if not fused:
        monkeypatch.setattr(tiny, "kernels", lambda: None)
    bf16 = TinyModel(
        reverser.config.model_copy(update={"decode_dtype": "bfloat16"}), reverser.module
    )
    rng = random.Random(2)
    prompts = ["".join(rng.choices("abcdefgh", k=3)) + "=" for _ in range(200)]
    greedy = Sampling(0.0, max_new_tokens=6, stop_at_newline=True)
    want = reverser.generate(prompts, 1, greedy)
    got = bf16.generate(prompts, 1, greedy)
    right = sum(c[0].text == p[:3][::-1] for c, p in zip(want, prompts, strict=True))
    assert right >= 180, "the float32 model should have learned to reverse"
    same = sum(a[0].text == b[0].text for a, b in zip(got, want, strict=True))
    assert same >= 196
    for a, b in zip(got, want, strict=True):
        if a[0].text == b[0].text:
            assert a[0].logprob == pytest.approx(b[0].logprob, abs=0.05)
        assert a[0].token_logprobs is None and b[0].token_logprobs is not None
    # the model itself stays float32 (training and logprobs run in it)
    assert all(p.dtype == torch.float32 for p in reverser.module.parameters())


def test_decode_dtype_is_validated():
    with pytest.raises(ValueError, match="decode_dtype"):
        ModelConfig(decode_dtype="float16")
    with pytest.raises(ValueError, match="tiny-backend option"):
        HFModel.from_config(ModelConfig(backend="hf", decode_dtype="bfloat16"), seed=0)
    with pytest.raises(ValueError, match="decode_dtype: bfloat16"):
        TinyModel.create(ModelConfig(dtype="bfloat16"), seed=0)


def test_build_is_cached_and_failures_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLOOP_CACHE_DIR", str(tmp_path))
    bad = tmp_path / "cc"
    bad.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo "fake cc 1.0" && exit 0\n'
        "echo 'cc: out of luck' >&2\nexit 1\n"
    )
    bad.chmod(bad.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(RuntimeError, match="decode_kernels.c") as err:
        decode_kernels.build(str(bad))
    assert "out of luck" in str(err.value)
    assert not list(tmp_path.glob("kernels/*"))  # nothing half-written
    if KERNELS is None:
        pytest.skip("no working C compiler here")
    first = decode_kernels.build()
    mtime = first.stat().st_mtime_ns
    assert decode_kernels.build() == first and first.stat().st_mtime_ns == mtime
    monkeypatch.setenv("REASONLOOP_DECODE_KERNELS", "0")
    assert decode_kernels.kernels.__wrapped__() is None


def test_bf16_decode_copy_is_made_once_and_follows_the_weights(reverser):
    """The bf16 copy is reused while the weights stay as they are, and made again after an
    in-place update (as an optimiser step makes) or a load: the decode is then a fresh model's."""
    cfg = reverser.config.model_copy(update={"decode_dtype": "bfloat16"})
    model = TinyModel(cfg, copy.deepcopy(reverser.module))
    rng = random.Random(5)
    prompts = ["".join(rng.choices("abcdefgh", k=4)) + "=" for _ in range(40)]
    greedy = Sampling(0.0, max_new_tokens=6, stop_at_newline=True)

    def texts(m: TinyModel) -> list[str]:
        return [c[0].text for c in m.generate(prompts, 1, greedy)]

    before = texts(model)
    first = model._decode_copy
    assert texts(model) == before and model._decode_copy is first  # unchanged weights: reused

    original = copy.deepcopy(model.module.state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    changed = texts(model)
    assert changed != before, "the update should change the greedy answers"
    assert changed == texts(TinyModel(cfg, copy.deepcopy(model.module)))

    model.module.load_state_dict(original)
    assert texts(model) == before

    # A training step through the project's optimiser (torch's fused AdamW, which writes the
    # weights past their version counters) must make the copy again too.
    copied = model._decode_copy
    examples = [SFTExample(p, p[::-1][1:] + "\n") for p in prompts]
    train_sft(model, examples, TrainConfig(steps=2, batch_size=8, lr=3e-2, warmup_steps=1), seed=0)
    trained = texts(model)
    assert model._decode_copy is not copied
    assert trained == texts(TinyModel(cfg, copy.deepcopy(model.module)))
