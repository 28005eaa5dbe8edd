"""The neutral data model every format module reads into and writes from.

Coordinates are full-resolution pixels with (0, 0) the top-left corner of the top-left pixel, so a
box covering exactly pixel (0, 0) is ``(0, 0, 1, 1)``. This is the convention COCO uses for
``bbox`` and the one the ``Annotation.geometry`` JSON uses, so no half-pixel shifts are needed
anywhere except when rasterising masks.

Pure Python: no Django, no Celery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

SPLITS = ("train", "val", "test")

Box = tuple[float, float, float, float]
Points = list[list[float]]


class FormatError(ValueError):
    """A file or folder cannot be read at all (as opposed to one bad item in it)."""


@dataclass
class DatasetImage:
    """One image of a dataset.

    ``key`` is the stable identity (the caller's image id or, on import, the relative file path);
    ``file_name`` is the name written into exports; ``path`` is where the pixels are, when known.
    ``is_negative`` marks a confirmed defect-free image (it has no shapes on purpose).
    ``group`` is the folder an import found it in, when the layout gives it a meaning
    (``"train/good"``, ``"test/crack"`` in MVTec AD); the app stores it as the image's source folder.
    ``reference_path`` / ``reference_name``: the image's reference (golden sample, template,
    'before' picture) when it has one: COCO's ``reference_file_name`` field, a YOLO zip's
    ``references/`` folder.
    """

    key: str
    file_name: str
    width: int
    height: int
    split: str = "train"
    is_negative: bool = False
    path: Path | None = None
    group: str = ""
    reference_path: Path | None = None
    reference_name: str = ""


@dataclass
class Category:
    """A defect category; matched by ``name`` on import, ``id`` is only the id in a file."""

    name: str
    id: int | None = None


@dataclass
class Shape:
    """One label: a box or a polygon on the image whose key is ``image_key``.

    ``box`` is always set (for polygons it is the polygon's bounding box); ``points`` only for
    polygons.
    """

    image_key: str
    category: str
    kind: Literal["box", "polygon"]
    box: Box
    points: Points | None = None

    @classmethod
    def from_box(cls, image_key: str, category: str, box: Box) -> Shape:
        """A box shape from ``(x, y, w, h)``."""
        return cls(image_key, category, "box", tuple(float(v) for v in box))  # type: ignore[arg-type]

    @classmethod
    def from_polygon(cls, image_key: str, category: str, points: Points) -> Shape:
        """A polygon shape; its box is the points' bounding box."""
        pts = [[float(x), float(y)] for x, y in points]
        return cls(image_key, category, "polygon", polygon_bounds(pts), pts)

    @classmethod
    def from_geometry(cls, image_key: str, category: str, geometry: dict[str, Any]) -> Shape:
        """From the ``Annotation.geometry`` JSON: ``{"type": "box", "x", "y", "w", "h"}`` or
        ``{"type": "polygon", "points": [[x, y], ...]}``."""
        if geometry.get("type") == "polygon":
            return cls.from_polygon(image_key, category, geometry["points"])
        return cls.from_box(
            image_key, category, (geometry["x"], geometry["y"], geometry["w"], geometry["h"])
        )

    def to_geometry(self) -> dict[str, Any]:
        """To the ``Annotation.geometry`` JSON."""
        if self.kind == "polygon" and self.points:
            return {"type": "polygon", "points": [list(p) for p in self.points]}
        x, y, w, h = self.box
        return {"type": "box", "x": x, "y": y, "w": w, "h": h}

    @property
    def area(self) -> float:
        """Polygon area (shoelace) or box area, in square pixels."""
        if self.kind == "polygon" and self.points:
            return polygon_area(self.points)
        return self.box[2] * self.box[3]

    def polygon(self) -> Points:
        """The outline as points: the polygon itself, or the box's four corners clockwise."""
        if self.kind == "polygon" and self.points:
            return [list(p) for p in self.points]
        x, y, w, h = self.box
        return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


@dataclass
class Dataset:
    """Images, categories and shapes: what one export writes or one import read."""

    images: list[DatasetImage] = field(default_factory=list)
    categories: list[Category] = field(default_factory=list)
    shapes: list[Shape] = field(default_factory=list)

    def shapes_by_image(self) -> dict[str, list[Shape]]:
        """Shapes grouped by image key (every image present, possibly with an empty list)."""
        out: dict[str, list[Shape]] = {im.key: [] for im in self.images}
        for shape in self.shapes:
            out.setdefault(shape.image_key, []).append(shape)
        return out

    def splits(self) -> list[str]:
        """The splits used, in train/val/test order first, then any others by name."""
        used = {im.split for im in self.images}
        return [s for s in SPLITS if s in used] + sorted(used - set(SPLITS))

    def subset(self, split: str) -> Dataset:
        """The images of one split with their shapes (categories unchanged)."""
        images = [im for im in self.images if im.split == split]
        keys = {im.key for im in images}
        return Dataset(
            images, list(self.categories), [s for s in self.shapes if s.image_key in keys]
        )

    def category_names(self) -> list[str]:
        """Category names in order."""
        return [c.name for c in self.categories]


class Skipped(NamedTuple):
    """An item that was not imported (or was changed on import) and the plain-words reason."""

    item: str
    reason: str


@dataclass
class ImportReport:
    """What an import read: the good items in ``dataset``; every refused item in ``skipped``;
    items imported but changed on the way in (a box clipped to the image, an image without a
    label file taken as a negative) in ``adjusted``."""

    dataset: Dataset = field(default_factory=Dataset)
    skipped: list[Skipped] = field(default_factory=list)
    adjusted: list[Skipped] = field(default_factory=list)

    def skip(self, item: str, reason: str) -> None:
        """Record a refused item."""
        self.skipped.append(Skipped(item, reason))

    def adjust(self, item: str, what: str) -> None:
        """Record an item imported with a change."""
        self.adjusted.append(Skipped(item, what))

    def merge(self, other: ImportReport) -> None:
        """Add another report's items (categories merged by name)."""
        names = set(self.dataset.category_names())
        for cat in other.dataset.categories:
            if cat.name not in names:
                self.dataset.categories.append(cat)
                names.add(cat.name)
        self.dataset.images.extend(other.dataset.images)
        self.dataset.shapes.extend(other.dataset.shapes)
        self.skipped.extend(other.skipped)
        self.adjusted.extend(other.adjusted)


# --- geometry helpers ----------------------------------------------------------------------------


def polygon_area(points: Points) -> float:
    """Shoelace area of a simple polygon."""
    n = len(points)
    s = 0.0
    for i in range(n):
        x1, y1 = points[i]
        x2, y2 = points[(i + 1) % n]
        s += x1 * y2 - x2 * y1
    return abs(s) / 2.0


def polygon_bounds(points: Points) -> Box:
    """``(x, y, w, h)`` of the points' bounding box."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


def clip_box(box: Box, width: int, height: int) -> Box:
    """The part of ``box`` inside a ``width`` x ``height`` image (may have zero size)."""
    x, y, w, h = box
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    return (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))


def is_finite_number(value: Any) -> bool:
    """True for int/float values that are finite (bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_valid_text(text: str) -> bool:
    """False when ``text`` holds undecodable bytes (surrogate escapes) and so is not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_relative_name(name: str) -> bool:
    """True when ``name`` is a relative path that stays inside its folder."""
    norm = name.replace("\\", "/")
    if not norm or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return False
    return ".." not in norm.split("/")


def unique_export_names(images: list[DatasetImage]) -> dict[str, str]:
    """Map image key -> a file name unique (by stem, case-insensitively) among ``images``.

    Exports flatten images into one folder per split and YOLO pairs files by stem, so two
    uploads both called ``img.png`` (or ``a.png`` and ``a.jpg``) must not collide.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for im in images:
        base = Path(im.file_name.replace("\\", "/")).name or f"{im.key}.png"
        stem, suffix = Path(base).stem, Path(base).suffix
        candidate, n = base, 1
        while Path(candidate).stem.lower() in used:
            n += 1
            candidate = f"{stem}_{n}{suffix}"
        used.add(Path(candidate).stem.lower())
        out[im.key] = candidate
    return out
