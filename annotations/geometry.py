"""Validation of label geometry in full-resolution pixel coordinates. Pure: no Django.

Coordinates: (0, 0) is the top-left corner of the top-left pixel; an image of width W spans
x in [0, W]. Shapes may overshoot the border by up to ``TOLERANCE`` pixels (a drag that ends just
outside the image) and are clipped; anything further out is refused.
"""

from __future__ import annotations

import math
from typing import Any

from shapely.geometry import Polygon
from shapely.validation import explain_validity

TOLERANCE = 2.0
MAX_POINTS = 10_000


class GeometryError(ValueError):
    """The geometry is not a valid shape on this image; the message says why."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GeometryError(f"{what} must be a finite number")
    try:
        number = float(value)  # a JSON integer of 400 digits does not fit a float
    except OverflowError:
        raise GeometryError(f"{what} must be a finite number") from None
    if not math.isfinite(number):
        raise GeometryError(f"{what} must be a finite number")
    return number


def _clip(value: float, limit: float, what: str) -> float:
    if value < -TOLERANCE or value > limit + TOLERANCE:
        raise GeometryError(f"{what}={value:g} lies outside the image (0..{limit:g})")
    return min(max(value, 0.0), float(limit))


def normalize_geometry(geometry: Any, *, width: int, height: int) -> tuple[str, dict]:
    """Check ``geometry`` against an image of ``width`` x ``height``; return (kind, clean geometry)."""
    if not isinstance(geometry, dict):
        raise GeometryError("geometry must be an object with a 'type'")
    kind = geometry.get("type")
    if kind == "box":
        x = _number(geometry.get("x"), "x")
        y = _number(geometry.get("y"), "y")
        w = _number(geometry.get("w"), "w")
        h = _number(geometry.get("h"), "h")
        if w <= 0 or h <= 0:
            raise GeometryError("a box needs a positive width and height")
        x0, y0 = _clip(x, width, "x"), _clip(y, height, "y")
        x1, y1 = _clip(x + w, width, "x + w"), _clip(y + h, height, "y + h")
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            raise GeometryError("the box has no area inside the image")
        return "box", {
            "type": "box",
            "x": round(x0, 2),
            "y": round(y0, 2),
            "w": round(x1 - x0, 2),
            "h": round(y1 - y0, 2),
        }
    if kind == "polygon":
        raw = geometry.get("points")
        if not isinstance(raw, list):
            raise GeometryError("a polygon needs 'points': [[x, y], ...]")
        if len(raw) > MAX_POINTS:
            raise GeometryError(f"a polygon may have at most {MAX_POINTS} points")
        points: list[list[float]] = []
        for i, pt in enumerate(raw):
            if not isinstance(pt, list | tuple) or len(pt) != 2:
                raise GeometryError(f"point {i} must be [x, y]")
            px = _clip(_number(pt[0], f"point {i} x"), width, f"point {i} x")
            py = _clip(_number(pt[1], f"point {i} y"), height, f"point {i} y")
            p = [round(px, 2), round(py, 2)]
            if not points or p != points[-1]:
                points.append(p)
        if len(points) > 1 and points[0] == points[-1]:
            points.pop()  # closed rings are stored open
        if len(points) < 3:
            raise GeometryError("a polygon needs at least 3 distinct points")
        poly = Polygon(points)
        if poly.area <= 0 and poly.length > 0 and Polygon(points).convex_hull.area <= 0:
            raise GeometryError("the polygon has no area (its points are on one line)")
        if not poly.is_valid:
            raise GeometryError(f"the polygon crosses itself ({explain_validity(poly)})")
        if poly.area <= 0:
            raise GeometryError("the polygon has no area")
        return "polygon", {"type": "polygon", "points": points}
    raise GeometryError("geometry 'type' must be 'box' or 'polygon'")


def bounds(geometry: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a clean geometry."""
    if geometry["type"] == "box":
        return (
            geometry["x"],
            geometry["y"],
            geometry["x"] + geometry["w"],
            geometry["y"] + geometry["h"],
        )
    xs = [p[0] for p in geometry["points"]]
    ys = [p[1] for p in geometry["points"]]
    return min(xs), min(ys), max(xs), max(ys)
