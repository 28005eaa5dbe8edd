"""Small inline SVG plots the server renders (no chart library in the page): a precision/recall
curve as the points of a polyline. Used by the models page (a detector's curves per category on
its val split) and the run page (annotations)."""

from __future__ import annotations


def curve_svg_points(
    curve: list[dict], *, width: int = 320, height: int = 220, pad: int = 30
) -> str:
    """'x,y x,y ...' of precision (y) over recall (x) for an inline SVG polyline."""
    pts = [
        (p["recall"], p["precision"])
        for p in curve
        if p["recall"] is not None and p["precision"] is not None
    ]
    pts.sort()
    return " ".join(
        f"{pad + r * (width - 2 * pad):.1f},{height - pad - p * (height - 2 * pad):.1f}"
        for r, p in pts
    )


def dot_whisker(
    value: float | None, interval: list | None, *, width: int = 120, pad: int = 6
) -> dict | None:
    """Pixel positions on a 0-1 axis of ``width`` px for a figure and its interval (an inline
    SVG dot with a whisker); None without a figure."""
    if value is None:
        return None

    def x(v: float) -> float:
        return round(pad + min(max(v, 0.0), 1.0) * (width - 2 * pad), 1)

    lo, hi = interval if interval else (value, value)
    return {"x": x(value), "lo": x(lo), "hi": x(hi)}
