"""Small inline SVG charts (line and stacked bar), made in Python so a report needs no plotting
library in the browser and loads nothing from the network (inline `<svg>` in HTML needs no namespace either).

Every label passes through `html.escape`: series names and categories can come from a run's
records (drop reasons, evaluator names), which models and users write.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
CATEGORICAL = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442"]
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def ramp(i: int, n: int) -> str:
    """The i-th of n colours along viridis: ordered things (levels, rounds) read as ordered."""
    t = 0.0 if n <= 1 else i / (n - 1) * 0.92  # stop before the yellow end, unreadable on white
    pos = t * (len(_RAMP) - 1)
    k = min(int(pos), len(_RAMP) - 2)
    f = pos - k
    rgb = [round(a + (b - a) * f) for a, b in zip(_RAMP[k], _RAMP[k + 1], strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if 1e4 <= abs(v) < 1e12:
        return f"{v:,.0f}"
    if abs(v) >= 1e12 or abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


Series = tuple[str, Sequence[tuple[float, float | None]]]


class _Frame:
    """Plot-area geometry shared by the chart kinds: data to pixel coordinates and axes."""

    def __init__(self, width: int, height: int, legend_rows: int) -> None:
        self.w, self.h = width, height
        self.left, self.right, self.top = 56, 22, 28
        self.bottom = 40 + 16 * legend_rows

    @property
    def pw(self) -> float:
        return self.w - self.left - self.right

    @property
    def ph(self) -> float:
        return self.h - self.top - self.bottom

    def open(self, title: str) -> list[str]:
        return [
            f'<svg class="chart" role="img" '
            f'viewBox="0 0 {self.w} {self.h}" width="{self.w}" height="{self.h}">',
            f"<title>{escape(title)}</title>",
            f'<text x="{self.left}" y="16" class="chart-title">{escape(title)}</text>',
        ]

    def y_axis(self, ticks: list[float], y, label: str) -> list[str]:
        out = []
        for t in ticks:
            py = y(t)
            out.append(
                f'<line x1="{self.left}" x2="{self.left + self.pw:.1f}" y1="{py:.1f}" '
                f'y2="{py:.1f}" class="grid"/>'
                f'<text x="{self.left - 6}" y="{py + 4:.1f}" text-anchor="end" '
                f'class="tick">{escape(fmt(t))}</text>'
            )
        cy = self.top + self.ph / 2
        out.append(
            f'<text transform="translate(14 {cy:.1f}) rotate(-90)" text-anchor="middle" '
            f'class="axis-label">{escape(label)}</text>'
        )
        return out

    def x_label(self, label: str) -> str:
        return (
            f'<text x="{self.left + self.pw / 2:.1f}" y="{self.top + self.ph + 32:.1f}" '
            f'text-anchor="middle" class="axis-label">{escape(label)}</text>'
        )

    def legend(self, names: list[str], colors: list[str]) -> list[str]:
        """Clickable entries (the report's script toggles the matching series)."""
        out, x, row = [], self.left, 0
        y0 = self.top + self.ph + 48
        for i, (name, color) in enumerate(zip(names, colors, strict=True)):
            label = name if len(name) <= 28 else name[:27] + "\u2026"
            width = 22 + 7 * len(label)
            if x + width > self.w - self.right and x > self.left:
                x, row = self.left, row + 1
            out.append(
                f'<g class="legend-item" data-series="{i}" tabindex="0">'
                f'<rect x="{x}" y="{y0 + 16 * row - 9}" width="12" height="10" fill="{color}"/>'
                f'<text x="{x + 16}" y="{y0 + 16 * row}" class="tick">{escape(label)}</text></g>'
            )
            x += width
        return out


def _legend_rows(names: list[str], width: int) -> int:
    rows, x = 1, 56
    for name in names:
        w = 22 + 7 * min(len(name), 28)
        if x + w > width - 22 and x > 56:
            rows, x = rows + 1, 56
        x += w
    return rows if names else 0


def line_chart(
    series: list[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    colors: list[str] | None = None,
    bold: set[str] | frozenset[str] = frozenset(),
    width: int = 560,
    height: int = 300,
    x_ticks: list[float] | None = None,
) -> str:
    """Lines over a shared x axis; a None y breaks the line. Short series get dot markers
    with a native tooltip (`<title>`), long ones (training curves) stay plain lines."""
    names = [s[0] for s in series]
    colors = colors or [CATEGORICAL[i % len(CATEGORICAL)] for i in range(len(series))]
    pts = [(x, y) for _, ps in series for x, y in ps if y is not None and math.isfinite(y)]
    frame = _Frame(width, height, _legend_rows(names, width))
    out = frame.open(title)
    if not pts:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text>')
        return "\n".join(out + ["</svg>"])
    xs = [p[0] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y_range:
        y0, y1 = y_range
    else:
        ys = [p[1] for p in pts]
        y0, y1 = min(ys), max(ys)
        pad = (y1 - y0) * 0.05 or abs(y1) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    yt = [t for t in nice_ticks(y0, y1) if y0 - 1e-12 <= t <= y1 + 1e-12] or [y0]

    def px(x: float) -> float:
        return frame.left + (x - x0) / (x1 - x0) * frame.pw

    def py(y: float) -> float:
        return frame.top + (1 - (y - y0) / (y1 - y0)) * frame.ph

    out += frame.y_axis(yt, py, y_label)
    for t in x_ticks if x_ticks is not None else nice_ticks(x0, x1, 8):
        if x0 <= t <= x1:
            out.append(
                f'<text x="{px(t):.1f}" y="{frame.top + frame.ph + 16:.1f}" '
                f'text-anchor="middle" class="tick">{escape(fmt(t))}</text>'
            )
    out.append(frame.x_label(x_label))
    for i, (name, ps) in enumerate(series):
        sw = 3 if name in bold else 1.6
        g = [f'<g class="series" data-series="{i}" stroke="{colors[i]}" fill="{colors[i]}">']
        seg: list[str] = []
        good = [(x, y) for x, y in ps if y is not None and math.isfinite(y)]
        for x, y in [*ps, (math.nan, None)]:
            if y is None or not math.isfinite(y):
                if len(seg) > 1:
                    g.append(
                        f'<polyline fill="none" stroke-width="{sw}" points="{" ".join(seg)}"/>'
                    )
                seg = []
                continue
            seg.append(f"{px(x):.1f},{py(y):.1f}")
        if len(good) <= 40:
            for x, y in good:
                g.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{sw + 0.6:.1f}">'
                    f"<title>{escape(name)}: x={escape(fmt(x))}, y={escape(fmt(y))}</title>"
                    "</circle>"
                )
        out += g + ["</g>"]
    out += frame.legend(names, colors)
    return "\n".join(out + ["</svg>"])


def bar_chart(
    categories: list[str],
    stacks: list[tuple[str, list[float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    colors: list[str] | None = None,
    width: int = 560,
    height: int = 300,
) -> str:
    """Stacked bars, one per category; each stack part has a tooltip with its value."""
    names = [s[0] for s in stacks]
    colors = colors or [CATEGORICAL[i % len(CATEGORICAL)] for i in range(len(stacks))]
    frame = _Frame(width, height, _legend_rows(names, width))
    out = frame.open(title)
    totals = [sum(s[1][c] for s in stacks) for c in range(len(categories))]
    top = max(totals, default=0) or 1.0
    yt = nice_ticks(0, top)
    y1 = max(yt[-1], top)

    def py(y: float) -> float:
        return frame.top + (1 - y / y1) * frame.ph

    out += frame.y_axis(yt, py, y_label)
    slot = frame.pw / max(1, len(categories))
    bw = min(48.0, slot * 0.7)
    for c, cat in enumerate(categories):
        cx = frame.left + slot * (c + 0.5)
        out.append(
            f'<text x="{cx:.1f}" y="{frame.top + frame.ph + 16:.1f}" text-anchor="middle" '
            f'class="tick">{escape(cat)}</text>'
        )
    for i, (name, values) in enumerate(stacks):
        g = [f'<g class="series" data-series="{i}" fill="{colors[i]}">']
        for c, v in enumerate(values):
            if v <= 0:
                continue
            below = sum(s[1][c] for s in stacks[:i])
            cx = frame.left + slot * (c + 0.5)
            y_top, y_bot = py(below + v), py(below)
            g.append(
                f'<rect x="{cx - bw / 2:.1f}" y="{y_top:.1f}" width="{bw:.1f}" '
                f'height="{max(0.5, y_bot - y_top):.1f}"><title>{escape(categories[c])}, '
                f"{escape(name)}: {escape(fmt(v))}</title></rect>"
            )
        out += g + ["</g>"]
    out.append(frame.x_label(x_label))
    out += frame.legend(names, colors)
    return "\n".join(out + ["</svg>"])
