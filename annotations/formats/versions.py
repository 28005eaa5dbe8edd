"""Content hash and comparison of datasets (pure helpers for frozen dataset versions).

Both work on the neutral model, so two versions frozen from the same labels hash the same no
matter the order rows came out of the database, and geometry is compared after rounding to a
thousandth of a pixel (float noise is not a change).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from .model import Dataset, Shape

__all__ = ["content_hash", "diff_datasets", "DatasetDiff"]


def _shape_sig(shape: Shape) -> tuple:
    pts = tuple(tuple(round(v, 3) for v in p) for p in shape.points) if shape.points else ()
    return (shape.category, shape.kind, tuple(round(v, 3) for v in shape.box), pts)


def content_hash(dataset: Dataset) -> str:
    """SHA-256 over images (key, size, split, negative), category names and shapes, sorted."""
    images = sorted(
        [im.key, im.width, im.height, im.split, im.is_negative] for im in dataset.images
    )
    shapes = sorted([s.image_key, *map(repr, _shape_sig(s))] for s in dataset.shapes)
    payload = {"images": images, "categories": sorted(dataset.category_names()), "shapes": shapes}
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class DatasetDiff:
    """What changed from ``old`` to ``new``: image keys and shape counts per category."""

    added_images: list[str] = field(default_factory=list)
    removed_images: list[str] = field(default_factory=list)
    moved_images: list[tuple[str, str, str]] = field(default_factory=list)  # key, old, new split
    relabelled_images: list[str] = field(default_factory=list)  # same image, different shapes
    shapes_added: Counter[str] = field(default_factory=Counter)  # per category
    shapes_removed: Counter[str] = field(default_factory=Counter)

    @property
    def unchanged(self) -> bool:
        """True when nothing differs."""
        return not (
            self.added_images
            or self.removed_images
            or self.moved_images
            or self.relabelled_images
            or self.shapes_added
            or self.shapes_removed
        )


def diff_datasets(old: Dataset, new: Dataset) -> DatasetDiff:
    """Compare two datasets image by image (by key); shapes compared by geometry."""
    out = DatasetDiff()
    old_images = {im.key: im for im in old.images}
    new_images = {im.key: im for im in new.images}
    out.added_images = sorted(set(new_images) - set(old_images))
    out.removed_images = sorted(set(old_images) - set(new_images))
    old_shapes, new_shapes = old.shapes_by_image(), new.shapes_by_image()
    for key in sorted(set(old_images) | set(new_images)):
        a = Counter(_shape_sig(s) for s in old_shapes.get(key, []))
        b = Counter(_shape_sig(s) for s in new_shapes.get(key, []))
        for sig, n in (b - a).items():
            out.shapes_added[sig[0]] += n
        for sig, n in (a - b).items():
            out.shapes_removed[sig[0]] += n
        if key in old_images and key in new_images:
            if old_images[key].split != new_images[key].split:
                out.moved_images.append((key, old_images[key].split, new_images[key].split))
            if a != b:
                out.relabelled_images.append(key)
    return out
