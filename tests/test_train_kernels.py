"""The fused C training kernels (causal attention with RoPE, SwiGLU; forward and backward)
against the torch ops they replace, alone and inside real training."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from reasonloop.algorithms.sft import train_sft
from reasonloop.config import ModelConfig, TrainConfig
from reasonloop.models import decode_kernels, train_kernels
from reasonloop.models.tiny import TinyModel, rope_tables, swap_halves
from reasonloop.types import SFTExample

KERNELS = train_kernels.kernels()
needs_kernels = pytest.mark.skipif(
    KERNELS is None, reason="train kernels unavailable here (no C compiler, or not Linux)"
)
TOL = dict(atol=2e-5, rtol=2e-5)


def torch_attention(qkv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
    """What `Block.forward` computes without the kernel: [B, T, H * hd]."""
    B, T, _, H, hd = qkv.shape
    if rope is None:
        q, k = qkv[:, :, 0], qkv[:, :, 1]
    else:
        cos, sin = rope[0][:, None, None], rope[1][:, None, None]
        qk = qkv[:, :, :2]
        q, k = torch.addcmul(qk * cos, swap_halves(qk), sin).unbind(2)
    v = qkv[:, :, 2]
    a = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=T > 1
    )
    return a.transpose(1, 2).reshape(B, T, H * hd)


def value_and_grad(fn, x: torch.Tensor, weight: torch.Tensor):
    x = x.detach().requires_grad_(True)
    out = fn(x)
    (out * weight).sum().backward()
    return out.detach(), x.grad


def check_attention(kern: train_kernels.TrainKernels, hd: int, rotary: bool) -> None:
    """The kernel's attention and its gradient against torch's at several lengths."""
    g = torch.Generator().manual_seed(hd + rotary)
    H = 3
    # T: one position, under one block of 16, a block and one over, the benchmark's length,
    # and two whole blocks.
    for T in (1, 5, 17, 46, 64):
        qkv = torch.randn(4, T, 3, H, hd, generator=g) * 2
        weight = torch.randn(4, T, H * hd, generator=g)
        rope = rope_tables(hd, 10000.0, T) if rotary else None
        cos, sin = rope or (None, None)
        want, want_grad = value_and_grad(lambda x, rope=rope: torch_attention(x, rope), qkv, weight)
        got, got_grad = value_and_grad(
            lambda x, cos=cos, sin=sin: kern.attention(x, cos, sin), qkv, weight
        )
        torch.testing.assert_close(got, want, **TOL)
        torch.testing.assert_close(got_grad, want_grad, **TOL)


@needs_kernels
@pytest.mark.parametrize("hd", [16, 32, 64])
@pytest.mark.parametrize("rotary", [True, False])
def test_attention_forward_and_backward_match_torch(hd, rotary):
    check_attention(KERNELS, hd, rotary)


@needs_kernels
def test_older_gcc_shuffles_match_torch(tmp_path, monkeypatch):
    """GCC before 12 has no __builtin_shufflevector, and the attention's register transposes
    then use __builtin_shuffle. Built without the first, the kernels match torch too."""
    line = "#define HAVE_SHUFFLEVECTOR 1\n"
    text = train_kernels.SOURCE.read_text()
    assert line in text
    (tmp_path / train_kernels.SOURCE.name).write_text(text.replace(line, ""))
    for header in train_kernels.SOURCE.parent.glob("*.h"):
        (tmp_path / header.name).write_bytes(header.read_bytes())
    monkeypatch.setenv("REASONLOOP_CACHE_DIR", str(tmp_path / "cache"))
    fallback = train_kernels.TrainKernels(
        decode_kernels.build(source=tmp_path / train_kernels.SOURCE.name)
    )
    for hd, rotary in ((16, True), (64, False)):
        check_attention(fallback, hd, rotary)


@needs_kernels
def test_swiglu_forward_and_backward_match_torch():
    g = torch.Generator().manual_seed(0)
    gu = torch.randn(3, 7, 2 * 40, generator=g) * 4
    gu[0, 0, :4] = torch.tensor([-100.0, 100.0, -90.0, 90.0])  # past exp's clamp either way
    weight = torch.randn(3, 7, 40, generator=g)

    def torch_swiglu(x):
        gate, up = x.chunk(2, -1)
        return F.silu(gate) * up

    want, want_grad = value_and_grad(torch_swiglu, gu, weight)
    got, got_grad = value_and_grad(KERNELS.swiglu, gu, weight)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_grad, want_grad, **TOL)


@needs_kernels
def test_rms_norm_forward_and_backward_match_torch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 9, 72, generator=g) * 3
    x[0, 0] = 0.0  # a zero row: only eps under the root
    w = torch.randn(72, generator=g).requires_grad_(True)
    weight = torch.randn(5, 9, 72, generator=g)
    grads = []
    for fn in (lambda a: F.rms_norm(a, (72,), w, 1e-5), lambda a: KERNELS.rms_norm(a, w, 1e-5)):
        w.grad = None
        grads.append((*value_and_grad(fn, x, weight), w.grad.clone()))
    for want, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, **TOL)


@needs_kernels
def test_usable_only_for_float32_cpu_head_sizes_of_16_and_bounded_lengths():
    assert KERNELS.usable(torch.zeros(1, 2, 3, 2, 32))
    assert not KERNELS.usable(torch.zeros(1, 2, 3, 2, 24))  # not a multiple of 16
    assert not KERNELS.usable(torch.zeros(1, 2, 3, 2, 272))  # over MAX_HEAD_DIM
    assert not KERNELS.usable(torch.zeros(1, 2, 3, 2, 32, dtype=torch.bfloat16))
    assert not KERNELS.usable(torch.zeros(1, train_kernels.MAX_LENGTH + 1, 3, 1, 16))
    with pytest.raises(ValueError, match="head size 24"):
        KERNELS.attention(torch.zeros(1, 2, 3, 2, 24), None, None)


def _examples() -> list[SFTExample]:
    return [SFTExample(f"{a}+{b}=", str(a + b)) for a in range(3, 40, 3) for b in range(5, 60, 7)]


@needs_kernels
@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(dim=64, n_layers=2, n_heads=2),  # head size 32, RoPE
        ModelConfig(dim=64, n_layers=2, n_heads=4, rope_theta=float("inf")),  # 16, NoPE
        ModelConfig(dim=48, n_layers=2, n_heads=2),  # 24: attention through torch, SwiGLU not
    ],
)
def test_training_with_and_without_kernels_is_the_same(cfg):
    """A few seconds of real SFT: the same losses step by step and the same weights after."""
    examples = _examples()
    tcfg = TrainConfig(steps=25, batch_size=16, lr=3e-3, warmup_steps=2)
    base = TinyModel.create(cfg, seed=0)
    fused = base.copy()
    fused_stats = train_sft(fused, examples, tcfg, seed=0)
    plain = base.copy()
    with train_kernels.disabled():
        assert train_kernels.kernels() is None
        plain_stats = train_sft(plain, examples, tcfg, seed=0)
    assert fused_stats["losses"][-1] < 0.8 * fused_stats["losses"][0]  # it did learn
    torch.testing.assert_close(
        torch.tensor(fused_stats["losses"]), torch.tensor(plain_stats["losses"]), atol=1e-4, rtol=0
    )
    plain_state = plain.module.state_dict()
    for name, a in fused.module.state_dict().items():
        torch.testing.assert_close(a, plain_state[name], atol=1e-4, rtol=1e-3, msg=name)


@needs_kernels
def test_left_padded_and_tree_layouts_still_run_through_torch():
    """A batch with a mask (left padding) is not the kernel's layout: the logits of each row
    equal that row's own unpadded forward, which takes the kernel."""
    model = TinyModel.create(ModelConfig(dim=64, n_layers=2, n_heads=2), seed=0)
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    attn = torch.ones(2, 9, dtype=torch.long)
    attn[1, :3] = 0  # row 1 is left-padded by 3
    with torch.no_grad():
        batch = model.forward(ids, attn)
        alone = model.forward(ids[1:, 3:])
    torch.testing.assert_close(batch[1, 3:], alone[0], **TOL)


def test_no_compiler_means_torch_ops(monkeypatch, tmp_path, caplog):
    """With a compiler that fails (and no build cached) the kernels are None, with a warning."""
    monkeypatch.setenv("REASONLOOP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    train_kernels.load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert train_kernels.kernels() is None
        if decode_kernels.supported():  # elsewhere None without trying to build
            assert "training with torch ops" in caplog.text
    finally:
        monkeypatch.undo()
        train_kernels.load.cache_clear()
    assert (train_kernels.kernels() is None) == (KERNELS is None)
