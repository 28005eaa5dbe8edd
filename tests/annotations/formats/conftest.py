"""Small synthetic datasets on disk for the format tests (no database)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from annotations.formats import Category, Dataset, DatasetImage, Shape


def make_image(path: Path, width: int, height: int, *, mode: str = "L") -> Path:
    """A deterministic gradient image (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, (width, height))
    img.putdata([((x * 7 + y * 3) % 256) for y in range(height) for x in range(width)])
    img.save(path)
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def sample(tmp_path: Path) -> Dataset:
    """Six images over three splits: boxes, polygons, two categories, two negatives."""
    src = tmp_path / "src"
    images = [
        DatasetImage("img-1", "a.png", 120, 80, "train"),
        DatasetImage("img-2", "b.png", 100, 100, "train"),
        DatasetImage("img-3", "c.png", 90, 60, "val"),
        DatasetImage("img-4", "d.png", 64, 64, "test"),
        DatasetImage("img-5", "good1.png", 64, 48, "train", is_negative=True),
        DatasetImage("img-6", "good2.png", 64, 48, "test", is_negative=True),
    ]
    for im in images:
        im.path = make_image(src / im.file_name, im.width, im.height)
    shapes = [
        Shape.from_box("img-1", "scratch", (10, 12, 30, 20)),
        Shape.from_box("img-1", "dent", (60.5, 40.25, 25.5, 30)),
        Shape.from_polygon("img-2", "dent", [[10, 10], [50, 12], [40, 60], [12, 45]]),
        Shape.from_box("img-3", "scratch", (0, 0, 90, 60)),
        Shape.from_polygon("img-3", "scratch", [[20, 5], [70, 5], [45, 50]]),
        Shape.from_box("img-4", "dent", (30, 30, 3, 4)),
    ]
    return Dataset(images, [Category("scratch", 1), Category("dent", 2)], shapes)


def geometry_by_name(dataset: Dataset) -> dict[str, list[tuple]]:
    """file name -> sorted (category, kind, rounded box, rounded points) for comparisons."""
    names = {im.key: im.file_name for im in dataset.images}
    out: dict[str, list[tuple]] = {im.file_name: [] for im in dataset.images}
    for s in dataset.shapes:
        pts = tuple(tuple(round(v, 2) for v in p) for p in s.points) if s.points else None
        out[names[s.image_key]].append((s.category, s.kind, tuple(round(v, 2) for v in s.box), pts))
    return {k: sorted(v, key=repr) for k, v in out.items()}
