"""The run's chart, as one SVG file: requests per second and p99 latency per route, ours beside
the floor (todo routes) and better-auth's own server (auth routes), each route's bars on the
route's own scale. Written by hand, so the benchmark needs no plotting library."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

COLOURS = {"ours": "#2563eb", "floor": "#9ca3af", "better-auth": "#f59e0b"}
BAR, GAP, GROUP_GAP = 16, 3, 14
LABEL_W, PANEL_W, PANEL_GAP, TOP, LEGEND_H = 190, 330, 70, 64, 34


@dataclass(frozen=True)
class Bar:
    route: str
    impl: str
    rps: float
    p99_ms: float


def _group(bars: Sequence[Bar]) -> list[tuple[str, list[Bar]]]:
    routes: dict[str, list[Bar]] = {}
    for bar in bars:
        routes.setdefault(bar.route, []).append(bar)
    return list(routes.items())


def _panel(
    groups: list[tuple[str, list[Bar]]], x0: float, title: str, value: str, unit: str
) -> list[str]:
    out = [
        f'<text x="{x0}" y="{TOP - 14}" class="h">{escape(title)}</text>',
        f'<line x1="{x0}" y1="{TOP - 4}" x2="{x0}" y2="{_height(groups) - LEGEND_H}" '
        'stroke="#d1d5db"/>',
    ]
    y = TOP
    for _, bars in groups:
        # Each route on its own scale: the bars compare implementations, not routes.
        top = max(getattr(b, value) for b in bars) or 1.0
        for bar in bars:
            amount = getattr(bar, value)
            width = max(1.0, (PANEL_W - 70) * amount / top)
            text = f"{amount:,.0f}" if value == "rps" else f"{amount:,.1f}"
            out.append(
                f'<rect x="{x0}" y="{y}" width="{width:.1f}" height="{BAR}" '
                f'fill="{COLOURS.get(bar.impl, "#6b7280")}"><title>{escape(bar.route)}, '
                f"{escape(bar.impl)}: {text} {unit}</title></rect>"
            )
            out.append(f'<text x="{x0 + width + 4:.1f}" y="{y + BAR - 4}">{text}</text>')
            y += BAR + GAP
        y += GROUP_GAP
    return out


def _height(groups: list[tuple[str, list[Bar]]]) -> int:
    bars = sum(len(b) for _, b in groups)
    return TOP + bars * (BAR + GAP) + len(groups) * GROUP_GAP + LEGEND_H


def svg(bars: Sequence[Bar], title: str, subtitle: str) -> str:
    groups = _group(bars)
    width = LABEL_W + 2 * PANEL_W + PANEL_GAP + 20
    height = _height(groups)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        "<style>.h{font-weight:bold;font-size:12px}.t{font-weight:bold;font-size:14px}</style>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" class="t">{escape(title)}</text>',
        f'<text x="10" y="36" fill="#4b5563">{escape(subtitle)}</text>',
    ]
    y = TOP
    for route, route_bars in groups:
        block = len(route_bars) * (BAR + GAP) - GAP
        out.append(
            f'<text x="{LABEL_W - 8}" y="{y + block / 2 + 4:.1f}" text-anchor="end">'
            f"{escape(route)}</text>"
        )
        y += block + GAP + GROUP_GAP
    out += _panel(groups, LABEL_W, "requests per second (higher is better)", "rps", "req/s")
    out += _panel(
        groups, LABEL_W + PANEL_W + PANEL_GAP, "p99 latency, ms (lower is better)", "p99_ms", "ms"
    )
    x = 10.0
    legend_y = height - LEGEND_H + 14
    for impl in dict.fromkeys(b.impl for b in bars):
        out.append(
            f'<rect x="{x}" y="{legend_y}" width="12" height="12" '
            f'fill="{COLOURS.get(impl, "#6b7280")}"/>'
        )
        out.append(f'<text x="{x + 16}" y="{legend_y + 10}">{escape(impl)}</text>')
        x += 30 + 7 * len(impl)
    out.append("</svg>")
    return "\n".join(out) + "\n"
