"""Inline SVG charts drawn in Python: no script and no asset from anywhere else.

Colours are SVG presentation attributes (not ``style``), so the charts draw under the
console's Content-Security-Policy and also in an SVG saved on its own. Every text is
escaped; a chart is returned as :class:`markupsafe.Markup` for the templates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from markupsafe import Markup, escape

from .wording import ONE_IN_FROM_RISK_CAP, one_in_from_risk, one_in_text, when_text

# Benign percentiles a feature chart draws: the outer band, the inner band, the median.
BAND_PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)
INK = "#1f2933"
MUTED = "#7b8794"
BAND_OUTER = "#d9f0e3"
BAND_INNER = "#9fd8b7"
BENIGN = "#2f855a"
ACCOUNT = "#c53030"
LOOKALIKE = "#2b6cb0"
WATCH = "#d69e2e"
FLAG = "#c53030"


@dataclass(frozen=True)
class BenignBand:
    """One feature's benign distribution at a history length: the percentiles a chart draws."""

    p5: float
    p25: float
    p50: float
    p75: float
    p95: float
    rows: int  # benign rows the percentiles come from

    @classmethod
    def of(cls, values: np.ndarray) -> BenignBand | None:
        """The band of the finite ``values`` (None when there are none)."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return None
        p5, p25, p50, p75, p95 = (float(q) for q in np.percentile(values, BAND_PERCENTILES))
        return cls(p5, p25, p50, p75, p95, int(values.size))


def _number(value: float) -> str:
    return f"{value:.3g}"


def _svg(width: int, height: int, label: str, body: list[str], css_class: str) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{css_class}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
        + "".join(body)
        + "</svg>"
    )


def feature_chart(
    name: str,
    value: float | None,
    band: BenignBand | None,
    lookalike: float | None = None,
    width: int = 340,
    height: int = 46,
) -> Markup:
    """A strip for one feature: the benign 5-95 and 25-75 percentile bands with the median,
    the nearest benign look-alikes' mean (a blue diamond) and the account's value (a red dot)."""
    points = [v for v in (value, lookalike) if v is not None and math.isfinite(v)]
    if band is not None:
        points += [band.p5, band.p95]
    if not points:
        return _svg(
            width, height, f"{name}: no value yet", [_text(8, height / 2, "no value yet", MUTED)], "feature-chart"
        )
    low, high = min(points), max(points)
    pad = (high - low) * 0.08 or max(abs(high) * 0.1, 1e-3)
    low, high = low - pad, high + pad
    left, right, top, bar = 6.0, width - 6.0, 6.0, 18.0

    def x(v: float) -> float:
        return left + (v - low) / (high - low) * (right - left)

    body = [
        f'<line x1="{left}" y1="{top + bar + 1}" x2="{right}" y2="{top + bar + 1}" stroke="{MUTED}" stroke-width="1"/>'
    ]
    label = f"{name}: "
    if band is not None:
        body += [
            _rect(x(band.p5), top, x(band.p95) - x(band.p5), bar, BAND_OUTER, "benign-band"),
            _rect(x(band.p25), top, x(band.p75) - x(band.p25), bar, BAND_INNER, "benign-band-inner"),
            f'<line class="benign-median" x1="{x(band.p50):.1f}" y1="{top}" x2="{x(band.p50):.1f}" '
            f'y2="{top + bar}" stroke="{BENIGN}" stroke-width="2"/>',
        ]
        label += f"benign 5-95th percentile {_number(band.p5)} to {_number(band.p95)}, median {_number(band.p50)}; "
    if lookalike is not None and math.isfinite(lookalike):
        cx, cy = x(lookalike), top + bar / 2
        body.append(
            f'<path class="lookalike" d="M{cx:.1f} {cy - 6:.1f} L{cx + 6:.1f} {cy:.1f} L{cx:.1f} {cy + 6:.1f} '
            f'L{cx - 6:.1f} {cy:.1f} Z" fill="{LOOKALIKE}"/>'
        )
        label += f"nearest benign look-alikes {_number(lookalike)}; "
    if value is not None and math.isfinite(value):
        body.append(
            f'<circle class="account-value" cx="{x(value):.1f}" cy="{top + bar / 2:.1f}" r="5.5" fill="{ACCOUNT}" '
            f'stroke="#ffffff" stroke-width="1.5"/>'
        )
        label += f"this account {_number(value)}"
    else:
        label += "this account: no value yet"
    body += [
        _text(left, height - 4, _number(low + pad), MUTED, "start"),
        _text(right, height - 4, _number(high - pad), MUTED, "end"),
    ]
    return _svg(width, height, label, body, "feature-chart")


def risk_chart(
    points: Sequence[tuple[int, float]],
    watch_one_in: float,
    flag_one_in: float,
    width: int = 1000,
    height: int = 240,
) -> Markup:
    """Rarity over the account's queries: "1 in N benign accounts" on a log scale (capped
    where a 6-digit risk stops telling values apart), with the watch and flag lines."""
    left, right, top, bottom = 78.0, width - 12.0, 12.0, height - 30.0
    decades = math.ceil(math.log10(ONE_IN_FROM_RISK_CAP))

    def y(one_in: float) -> float:
        share = min(max(math.log10(max(one_in, 1.0)) / decades, 0.0), 1.0)
        return bottom - share * (bottom - top)

    n_max = max((n for n, _ in points), default=1) or 1

    def x(n: float) -> float:
        return left + n / n_max * (right - left)

    body = []
    for decade in range(decades + 1):
        level = y(10.0**decade)
        body.append(
            f'<line x1="{left}" y1="{level:.1f}" x2="{right}" y2="{level:.1f}" stroke="#e4e7eb" stroke-width="1"/>'
        )
        body.append(_text(left - 6, level + 4, one_in_text(10.0**decade), MUTED, "end"))
    for one_in, colour, name in ((watch_one_in, WATCH, "watch"), (flag_one_in, FLAG, "flag")):
        level = y(one_in)
        body.append(
            f'<line class="threshold-{name}" x1="{left}" y1="{level:.1f}" x2="{right}" y2="{level:.1f}" '
            f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        body.append(_text(right - 4, level - 4, name, colour, "end"))
    body.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="{MUTED}" stroke-width="1"/>')
    for tick in _ticks(n_max):
        body.append(_text(x(tick), bottom + 16, f"{tick:,}", MUTED, "middle"))
    body.append(_text(right, height - 2, "queries", MUTED, "end"))
    coordinates = [(x(n), y(one_in_from_risk(risk) or 1.0)) for n, risk in points]
    if coordinates:
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coordinates)
        body.append(f'<polyline class="risk-line" points="{path}" fill="none" stroke="{INK}" stroke-width="2"/>')
        cx, cy = coordinates[-1]
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{INK}"/>')
        label = (
            f"rarity over {len(points)} points up to query {n_max}; now {one_in_text(one_in_from_risk(points[-1][1]))}"
        )
    else:
        body.append(_text((left + right) / 2, (top + bottom) / 2, "no scored queries yet", MUTED, "middle"))
        label = "rarity over time: no points yet"
    return _svg(width, height, label, body, "risk-chart")


def timeline_chart(first_ts: float | None, last_ts: float | None, width: int = 1000, height: int = 54) -> Markup:
    """A campaign's span: from the first to the last linked query."""
    left, right, mid = 10.0, width - 10.0, 20.0
    if first_ts is None or last_ts is None:
        return _svg(width, height, "timeline: no timestamps", [_text(left, mid, "no timestamps", MUTED)], "timeline")
    body = [
        _rect(left, mid - 6, right - left, 12, BAND_INNER, "timeline-span"),
        f'<circle cx="{left}" cy="{mid}" r="5" fill="{INK}"/>',
        f'<circle cx="{right}" cy="{mid}" r="5" fill="{ACCOUNT}"/>',
        _text(left, height - 6, f"first {when_text(first_ts)}", MUTED, "start"),
        _text(right, height - 6, f"last {when_text(last_ts)}", MUTED, "end"),
    ]
    label = f"linked queries from {when_text(first_ts)} to {when_text(last_ts)}"
    return _svg(width, height, label, body, "timeline")


def _ticks(n_max: int, count: int = 5) -> list[int]:
    """Round query counts along the x axis, 0 first."""
    raw = n_max / count
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return list(range(0, n_max + 1, int(step)))


def _rect(x: float, y: float, width: float, height: float, fill: str, css_class: str) -> str:
    return (
        f'<rect class="{css_class}" x="{x:.1f}" y="{y:.1f}" width="{max(width, 1.0):.1f}" height="{height:.1f}" '
        f'fill="{fill}"/>'
    )


def _text(x: float, y: float, text: str, fill: str, anchor: str = "start") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" fill="{fill}" font-size="11" font-family="sans-serif" '
        f'text-anchor="{anchor}">{escape(text)}</text>'
    )
