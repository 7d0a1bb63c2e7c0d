"""Fault injection for the reliability tests: kill this very process with SIGKILL at a named
point, so resume is tested against a real crash, not a simulated one.

Set `REASONLOOP_FAULT=POINT:N` to die at the N-th time POINT is reached (points: `write`
inside an atomic write before its rename, `solve` after a generation batch, `train` after an
optimiser step, `checkpoint` after a checkpoint is written but before the manifest says so).
Unset, `hit` costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("REASONLOOP_FAULT", "")
_point, _, _n = _spec.partition(":")
_count = 0


def hit(point: str) -> None:
    global _count
    if not _spec or point != _point:
        return
    _count += 1
    if _count == int(_n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
