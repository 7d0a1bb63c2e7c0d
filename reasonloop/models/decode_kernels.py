"""Fused C kernels for the tiny backend's decode step, built on first use with the system C
compiler and loaded with ctypes (the source is `decode_kernels.c`, next to this file).

Why C: at batch 256 and under 4M parameters a decode step is four small matrix products a
layer, which torch runs well, and some 25 elementwise ops, each a dispatch and a trip through
memory; the single-query attention alone streams the KV cache three times in torch ops. The
kernels do each group in one pass (`decode_kernels.c` says which).

Why not a torch C++ extension: compiling against torch's headers takes about a minute; this
file compiles in about 1.5 s, needs no Python headers, and, linked with `-fopenmp`, binds to
the libgomp torch has already loaded (same SONAME), so the kernels share torch's threads rather
than competing with them.

Built once per source, compiler, flags and CPU into `$REASONLOOP_CACHE_DIR` (default
`$XDG_CACHE_HOME/reasonloop` or `~/.cache/reasonloop`), written atomically. Where there is no
compiler, on a platform other than Linux, or with `REASONLOOP_DECODE_KERNELS=0`, `kernels()`
returns None and the tiny backend decodes with plain torch ops (the same results to float
rounding; tests/test_decode_kernels.py compares both).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_kernels.c")
FLAGS = [
    "-O3",
    "-march=native",
    "-ffast-math",
    "-fno-finite-math-only",
    "-fopenmp",
    "-shared",
    "-fPIC",
]
SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}
"""Matrix dtypes the kernels take."""
ATTENTION_ROWS = 128
"""Rows (batch x head) per block of the attention kernel."""

_ptr = ctypes.c_void_p
_long = ctypes.c_long
_SIGNATURES = {
    "add_rms_norm": ([_ptr, _ptr, _ptr, _ptr, _long, _long, ctypes.c_float, ctypes.c_int], None),
    "rope_cache": ([_ptr] * 6 + [_long] * 3 + [ctypes.c_int], None),
    "attention": ([_ptr] * 5 + [_long] * 3 + [ctypes.c_float, _long, ctypes.c_int], ctypes.c_int),
    "silu_mul": ([_ptr, _ptr, _long, _long, ctypes.c_int], None),
}


def cache_dir() -> Path:
    if os.environ.get("REASONLOOP_CACHE_DIR"):
        return Path(os.environ["REASONLOOP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reasonloop"


def cpuinfo_line(prefix: str) -> str | None:
    """The first line of /proc/cpuinfo that starts with `prefix` (None: no such line, or no
    /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(prefix):
                return line
    except OSError:
        pass
    return None


def _cpu_flags() -> str:
    """-march=native code runs only where the build's CPU features are: key the build on them."""
    return cpuinfo_line("flags") or platform.processor()


def build(compiler: str | None = None, source: Path = SOURCE) -> Path:
    """Compile `source` (these kernels, or `train_kernels.c`) with the headers beside it into a
    shared library, or find it already built; raises on failure."""
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True)
    if ver.returncode != 0:
        raise RuntimeError(f"{cc} --version failed: {ver.stderr[-500:]}")
    version = ver.stdout
    texts = [source.read_bytes(), *(h.read_bytes() for h in sorted(source.parent.glob("*.h")))]
    key = hashlib.sha256(
        b"\0".join([*texts, " ".join(FLAGS).encode(), version.encode(), _cpu_flags().encode()])
    ).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"{source.stem}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run(
            [cc, *FLAGS, "-o", tmp, str(source), "-lm"], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed on {source}:\n{done.stderr[-2000:]}")
        os.replace(tmp, out)  # concurrent builders write the same bytes; the last rename wins
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class Kernels:
    """The loaded library, with tensor-level entry points. Callers pass contiguous tensors of
    the layouts each function states (the decode step allocates them so); matrices in one of
    `SUFFIX`'s dtypes, everything else float32."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.fns: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}
        for name, (args, res) in _SIGNATURES.items():
            for dtype, suffix in SUFFIX.items():
                fn = getattr(self.lib, f"{name}_{suffix}")
                fn.argtypes, fn.restype = args, res
                self.fns[name, dtype] = fn

    def add_rms_norm(
        self, x: torch.Tensor, y: torch.Tensor | None, w: torch.Tensor, h: torch.Tensor, eps: float
    ) -> None:
        """x [B, D] float32 += y [B, D] (if given), then h [B, D] = rmsnorm(x) * w (w float32)."""
        B, D = x.shape
        self.fns["add_rms_norm", h.dtype](
            x.data_ptr(), None if y is None else y.data_ptr(), w.data_ptr(), h.data_ptr(),
            B, D, eps, torch.get_num_threads(),
        )  # fmt: skip

    def rope_cache(
        self,
        qkv: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> None:
        """qkv [B, 3, H, hd] -> q, k, v [B, H, hd], rotary embedding (cos, sin [B, hd] float32,
        sin sign-folded as `tiny.rope_tables` makes it) on q and k."""
        B, _, H, hd = qkv.shape
        cos, sin = (None, None) if rope is None else (rope[0].data_ptr(), rope[1].data_ptr())
        self.fns["rope_cache", qkv.dtype](
            qkv.data_ptr(), cos, sin, q.data_ptr(), k.data_ptr(), v.data_ptr(),
            B, H, hd, torch.get_num_threads(),
        )  # fmt: skip

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor | None:
        """Single-query attention: q [N, hd]; k, v [T, N, hd]; bias [T, N] float32 (0 or -inf).
        Returns [N, hd], or None when the kernel could not allocate its scratch memory (the
        caller falls back to torch ops)."""
        T, N, hd = k.shape
        out = torch.empty_like(q)
        rc = self.fns["attention", q.dtype](
            q.data_ptr(), k.data_ptr(), v.data_ptr(), bias.data_ptr(), out.data_ptr(),
            T, N, hd, hd**-0.5, ATTENTION_ROWS, torch.get_num_threads(),
        )  # fmt: skip
        return None if rc else out

    def silu_mul(self, gu: torch.Tensor, out: torch.Tensor) -> None:
        """out [B, F] = silu(gu[:, :F]) * gu[:, F:] for gu [B, 2F]."""
        B, F = out.shape
        self.fns["silu_mul", gu.dtype](gu.data_ptr(), out.data_ptr(), B, F, torch.get_num_threads())


def packed_linear(weight: torch.Tensor, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """`x -> F.linear(x, weight)` with the weight packed once into oneDNN's blocked layout for
    about `rows` rows of x (the op inductor uses for frozen CPU linears): 5-30% less time per
    decode-step product here than `F.linear`, which repacks at every call. It is a private torch
    op: where it is missing or disagrees with `F.linear` on a probe, plain `F.linear`."""
    plain = functools.partial(F.linear, weight=weight)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)

        def linear(x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")

        probe = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0))
        probe = probe.to(weight.dtype)
        tol = 1e-4 if weight.dtype == torch.float32 else 3e-2
        if not torch.allclose(linear(probe).float(), plain(probe).float(), atol=tol, rtol=tol):
            return plain
        return linear
    except Exception:  # noqa: BLE001 - no such op, or not for this dtype: the public one
        return plain


def supported() -> bool:
    """Linux, and torch threaded by OpenMP: elsewhere torch's threads may not be libgomp's, and
    the kernels would add a second pool."""
    return sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info()


K = TypeVar("K")


def load_or_none(switch: str, make: Callable[[], K], name: str, use: str) -> K | None:
    """`make()` (build and load the `name` kernels), or None with `switch=0` in the
    environment, where `supported()` is false, or where `make` raises: a warning says that
    `use` ("decoding", "training") goes on with torch ops."""
    if os.environ.get(switch, "1") == "0" or not supported():
        return None
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - any failure means: the torch ops
        log.warning("%s kernels unavailable, %s with torch ops: %s", name, use, e)
        return None


@functools.cache
def kernels() -> Kernels | None:
    """The kernels, built and loaded once per process; None where they cannot be (see above)."""
    return load_or_none("REASONLOOP_DECODE_KERNELS", lambda: Kernels(build()), "decode", "decoding")
