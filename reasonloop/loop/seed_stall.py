"""A seed attempt that has not left its early loss plateau is cut short and starts over.

Why: some initial weights of the NoPE addition model leave the plateau (training loss about 1.4)
by step ~700 of the seed's 4000, others only at ~1500; the late ones are still far from fitted
after 4000 steps, miss `tasks.seed_check`, and the seed then starts over after a full attempt,
which doubles its cost (docs/easy-to-hard.md, seventh series). Their losses already differ by
step 1200 (0.92 against 1.41, mean of steps 900-1199), so the attempt can stop there.

Criterion, at step `at` (w = at // 4): the mean loss of steps [3w, 4w) has not fallen `drop`
below the mean of steps [w, 2w) (after the warmup's first fast fall).
"""

from __future__ import annotations

from collections.abc import Callable


class SeedStalled(Exception):
    """Raised from the training step callback; carries the attempt's losses so far."""

    def __init__(
        self, step: int, losses: list[float], before: float, now: float, tokens: int = 0
    ) -> None:
        super().__init__(
            f"seed loss {now:.3f} at step {step} has not fallen below the early plateau's "
            f"{before:.3f} by the required share"
        )
        self.step, self.losses, self.before, self.now = step, losses, before, now
        self.tokens = tokens  # trained on so far, from the step callbacks' `tokens`


def plateau(losses: list[float], at: int) -> tuple[float, float]:
    """(mean loss of steps [w, 2w), mean loss of steps [3w, 4w)) with w = at // 4."""
    w = at // 4
    if w < 1 or len(losses) < 4 * w:
        raise ValueError(
            f"plateau check at step {at} needs {4 * max(w, 1)} losses, got {len(losses)}"
        )
    return sum(losses[w : 2 * w]) / w, sum(losses[3 * w : 4 * w]) / w


def stalled(losses: list[float], at: int, drop: float) -> bool:
    """True when the loss at step `at` is not `drop` (a share) below its early plateau."""
    before, now = plateau(losses, at)
    return _stalled(before, now, drop)


def _stalled(before: float, now: float, drop: float) -> bool:
    return now > (1.0 - drop) * before


def watch(on_step: Callable[[dict], None], at: int, drop: float) -> Callable[[dict], None]:
    """Wrap a training step callback: at step `at` raise `SeedStalled` when `stalled`."""
    losses: list[float] = []
    tokens = 0

    def step(s: dict) -> None:
        nonlocal tokens
        on_step(s)
        losses.append(float(s.get("loss", 0.0)))
        tokens += int(s.get("tokens", 0))
        if len(losses) == at:
            before, now = plateau(losses, at)
            if _stalled(before, now, drop):
                raise SeedStalled(at, list(losses), before, now, tokens)

    return step
