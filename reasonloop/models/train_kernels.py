"""Fused C kernels for the tiny backend's training passes: causal attention with RoPE, SwiGLU
and RMSNorm, each forward and backward, as autograd functions (the source is `train_kernels.c`).

Why: an SFT step of the default tiny model (dim 128, 4 layers, 64 sequences of about 46
tokens) spent 17% of its time in torch's CPU flash attention, which is tuned for long
sequences, and most of the rest outside the matrix products in the elementwise ops of RoPE,
SwiGLU and RMSNorm's backward. The kernels take 2.4 ms a layer for the attention forward and
backward where `scaled_dot_product_attention` with the torch RoPE took about 9 ms, and make
the whole step 1.3-1.4x faster at dim 128 and 1.2x at dim 256 (docs/benchmarks.md).

Built and loaded like the decode kernels (`decode_kernels.build`: on first use, with the system
C compiler, cached per source, flags and CPU; OpenMP on torch's own threads). Where they cannot
be built, on a platform other than Linux, with `REASONLOOP_TRAIN_KERNELS=0` or inside
`disabled()`, `kernels()` returns None and the tiny backend trains with the torch ops (the same results to float
rounding; tests/test_train_kernels.py compares both).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from reasonloop.models import decode_kernels

SOURCE = Path(__file__).with_name("train_kernels.c")
MAX_HEAD_DIM = 256
"""The attention kernel takes head sizes that are multiples of 16 up to this."""
MAX_LENGTH = 1024
"""...and sequences up to this long: its backward holds two [T, T] score matrices per thread,
and beyond a few hundred positions torch's flash attention, built for long sequences, is the
better kernel."""

_ptr = ctypes.c_void_p
_long = ctypes.c_long
_SIGNATURES = {
    "attn_fwd": ([_ptr] * 5 + [_long] * 4 + [ctypes.c_float, ctypes.c_int], ctypes.c_int),
    "attn_bwd": ([_ptr] * 7 + [_long] * 4 + [ctypes.c_float, ctypes.c_int], ctypes.c_int),
    "swiglu_fwd": ([_ptr, _ptr, _long, _long, ctypes.c_int], None),
    "swiglu_bwd": ([_ptr, _ptr, _ptr, _long, _long, ctypes.c_int], None),
    "rms_fwd": ([_ptr] * 4 + [_long, _long, ctypes.c_float, ctypes.c_int], None),
    "rms_bwd": ([_ptr] * 6 + [_long, _long, ctypes.c_int], None),
}


def _p(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class TrainKernels:
    """The loaded library. Inputs are contiguous float32 CPU tensors in the layouts stated."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        for name, (args, res) in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, res

    def attention(
        self, qkv: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None
    ) -> torch.Tensor:
        """Causal attention of the projection's output qkv [B, T, 3, H, hd], with the rotary
        embedding (cos, sin [T, hd], sin sign-folded; None for none) on q and k: out [B, T,
        H * hd], differentiable in qkv."""
        return _Attention.apply(qkv, cos, sin, self)

    def swiglu(self, gu: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up of gu [..., 2F] = (gate, up): [..., F], differentiable in gu."""
        return _SwiGLU.apply(gu, self)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """`F.rms_norm` over the last dimension of x, differentiable in x and weight."""
        return _RMSNorm.apply(x, weight, eps, self)

    @staticmethod
    def takes(*tensors: torch.Tensor) -> bool:
        """Whether the kernels take these tensors: float32, on the CPU."""
        return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)

    def usable(self, qkv: torch.Tensor) -> bool:
        """Whether `attention` takes this projection output (dtype, head size, length)."""
        hd = qkv.shape[-1]
        return (
            self.takes(qkv) and hd % 16 == 0 and hd <= MAX_HEAD_DIM and qkv.shape[1] <= MAX_LENGTH
        )


def _check(rc: int, what: str, hd: int) -> None:
    if rc == 2:
        raise ValueError(f"train kernel {what}: head size {hd} is not a multiple of 16 up to 256")
    if rc:
        raise MemoryError(f"train kernel {what}: could not allocate its scratch memory")


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin, kern):  # type: ignore[override]
        qkv = qkv.contiguous()
        if cos is not None:
            cos, sin = cos.contiguous(), sin.contiguous()
        B, T, _, H, hd = qkv.shape
        out = qkv.new_empty(B, T, H * hd)
        lse = qkv.new_empty(B, H, T)
        rc = kern.lib.attn_fwd(
            _p(qkv), _p(cos), _p(sin), _p(out), _p(lse),
            B, T, H, hd, hd**-0.5, torch.get_num_threads(),
        )  # fmt: skip
        _check(rc, "attention forward", hd)
        ctx.kern = kern
        ctx.save_for_backward(qkv, cos, sin, out, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):  # type: ignore[override]
        qkv, cos, sin, out, lse = ctx.saved_tensors
        B, T, _, H, hd = qkv.shape
        dout = dout.contiguous()
        dqkv = torch.empty_like(qkv)
        rc = ctx.kern.lib.attn_bwd(
            _p(qkv), _p(cos), _p(sin), _p(out), _p(lse), _p(dout), _p(dqkv),
            B, T, H, hd, hd**-0.5, torch.get_num_threads(),
        )  # fmt: skip
        _check(rc, "attention backward", hd)
        return dqkv, None, None, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gu, kern):  # type: ignore[override]
        gu = gu.contiguous()
        F2 = gu.shape[-1]
        out = gu.new_empty(*gu.shape[:-1], F2 // 2)
        kern.lib.swiglu_fwd(_p(gu), _p(out), gu.numel() // F2, F2 // 2, torch.get_num_threads())
        ctx.kern = kern
        ctx.save_for_backward(gu)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):  # type: ignore[override]
        (gu,) = ctx.saved_tensors
        F2 = gu.shape[-1]
        dgu = torch.empty_like(gu)
        ctx.kern.lib.swiglu_bwd(
            _p(gu), _p(dout.contiguous()), _p(dgu), gu.numel() // F2, F2 // 2,
            torch.get_num_threads(),
        )  # fmt: skip
        return dgu, None


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, kern):  # type: ignore[override]
        x, weight = x.contiguous(), weight.contiguous()
        D = x.shape[-1]
        y = torch.empty_like(x)
        rstd = x.new_empty(x.numel() // D)
        kern.lib.rms_fwd(
            _p(x), _p(weight), _p(y), _p(rstd), rstd.numel(), D, eps, torch.get_num_threads()
        )
        ctx.kern = kern
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        threads = torch.get_num_threads()
        dx = torch.empty_like(x)
        dw = x.new_zeros(threads, x.shape[-1])
        ctx.kern.lib.rms_bwd(
            _p(x), _p(weight), _p(rstd), _p(dy.contiguous()), _p(dx), _p(dw),
            rstd.numel(), x.shape[-1], threads,
        )  # fmt: skip
        return dx, dw.sum(0), None, None


_off = False


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block the tiny backend uses the torch ops (to compare the two, or to rule the
    kernels out)."""
    global _off
    was, _off = _off, True
    try:
        yield
    finally:
        _off = was


def kernels() -> TrainKernels | None:
    """The kernels, or None where they cannot be built, outside Linux, with
    `REASONLOOP_TRAIN_KERNELS=0`, or inside `disabled()`."""
    return None if _off else load()


@functools.cache
def load() -> TrainKernels | None:
    """Build and load the kernels once per process; None where they cannot be."""
    return decode_kernels.load_or_none(
        "REASONLOOP_TRAIN_KERNELS",
        lambda: TrainKernels(decode_kernels.build(source=SOURCE)),
        "train",
        "training",
    )
