"""A PNG of held-out pass@1 per round: overall and per difficulty level."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from reasonloop.loop.store import atomic_write_bytes


def plot_heldout(rounds: list[dict[str, Any]], path: Path, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [m["round"] for m in rounds]
    levels = sorted({k for m in rounds for k in m["heldout"]["by_level"]}, key=int)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    cmap = plt.get_cmap("viridis")
    for i, lv in enumerate(levels):
        ys = [m["heldout"]["by_level"].get(lv) for m in rounds]
        ax.plot(
            xs,
            ys,
            marker="o",
            ms=3,
            lw=1.2,
            color=cmap(i / max(1, len(levels) - 1)),
            label=f"level {lv}",
        )
    ax.plot(xs, [m["heldout"]["pass@1"] for m in rounds], color="black", lw=2.4, label="all")
    ax.set_xlabel("round (0 = supervised seed)")
    ax.set_ylabel("held-out pass@1")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name
