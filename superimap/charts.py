"""Server-rendered SVG line charts for the dashboard (no JavaScript: the CSP is
``script-src 'self'`` and the overview must work without any)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 312, 160
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 34, 20


@dataclass
class Series:
    name: str
    values: list[float | None]  # one per point; None: no data for that point
    color: str
    dashed: bool = False


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if top <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(top))) - 1) if top >= 1 else 1.0
    if top < 1:
        for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
            if step >= top:
                return step
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= top:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _label(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:g} s"
    return f"{value:g}"


def line_chart(
    title: str,
    series: list[Series],
    start: datetime,
    end: datetime,
    *,
    unit: str = "",
    chart_id: str = "",
) -> SafeString:
    """An SVG chart of ``series`` over [start, end] (points evenly spaced)."""
    points = max((len(s.values) for s in series), default=0)
    top = _nice(max((v for s in series for v in s.values if v is not None), default=0.0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(i: int, value: float) -> str:
        x = LEFT + (inner_w * i / max(points - 1, 1))
        y = TOP + inner_h - inner_h * min(value, top) / top
        return f"{x:.1f},{y:.1f}"

    parts = [
        format_html(
            '<svg xmlns="http://www.w3.org/2000/svg" class="superimap-chart" id="{}" '
            'width="{}" height="{}" viewBox="0 0 {} {}" role="img" aria-label="{}">',
            chart_id,
            WIDTH,
            HEIGHT,
            WIDTH,
            HEIGHT,
            title,
        ),
        format_html("<title>{}</title>", title),
        format_html(
            '<rect x="{}" y="{}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>',
            LEFT,
            TOP,
            inner_w,
            inner_h,
        ),
        format_html(
            '<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>',
            LEFT - 4,
            TOP + 8,
            _label(top, unit),
        ),
        format_html(
            '<text x="{}" y="{}" font-size="11" text-anchor="end">0</text>', LEFT - 4, TOP + inner_h
        ),
        format_html(
            '<text x="{}" y="{}" font-size="11">{}</text>',
            LEFT,
            HEIGHT - 5,
            start.strftime("%H:%M"),
        ),
        format_html(
            '<text x="{}" y="{}" font-size="11" text-anchor="end">{} UTC</text>',
            WIDTH - RIGHT,
            HEIGHT - 5,
            end.strftime("%H:%M"),
        ),
    ]
    legend_x, legend_y = LEFT, 12
    for s in series:
        width = 18 + 6.8 * len(s.name)
        if legend_x + width > WIDTH:
            legend_x, legend_y = LEFT, legend_y + 14
        parts.append(
            format_html(
                '<text x="{}" y="{}" font-size="11" fill="{}">&#9632; {}</text>',
                f"{legend_x:.0f}",
                legend_y,
                s.color,
                s.name,
            )
        )
        legend_x += width
        # A line per run of points with data: a gap where a minute has none.
        run: list[str] = []
        runs: list[list[str]] = []
        for i, value in enumerate(s.values):
            if value is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(xy(i, value))
        if run:
            runs.append(run)
        for run in runs:
            if len(run) == 1:
                x, y = run[0].split(",")
                parts.append(
                    format_html('<circle cx="{}" cy="{}" r="2" fill="{}"/>', x, y, s.color)
                )
            else:
                parts.append(
                    format_html(
                        '<polyline class="series" data-series="{}" fill="none" stroke="{}" '
                        'stroke-width="{}" stroke-dasharray="{}" points="{}"/>',
                        s.name,
                        s.color,
                        "1.5" if s.dashed else "2",
                        "4 3" if s.dashed else "none",
                        " ".join(run),
                    )
                )
    parts.append(mark_safe("</svg>"))
    return mark_safe("".join(escape(p) if not hasattr(p, "__html__") else p for p in parts))
