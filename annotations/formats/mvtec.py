"""MVTec-AD layout for anomaly training and evaluation (write only).

::

    train/good/<name>                        defect-free images of the train split
    test/good/<name>                         defect-free images of the other splits
    test/<category>/<name>                   images with shapes (any split: MVTec's train set
                                             holds only good images)
    ground_truth/<category>/<stem>_mask.png  0/255 single-channel mask, the image's size

An image whose shapes are all of one category goes to that category's folder; an image with
several categories goes to ``combined`` (the name MVTec AD itself uses). An image without shapes
counts as good. Image files are copied byte for byte, keeping their format (anomalib matches
masks to images by stem). Category names become folder names with characters outside
``[A-Za-z0-9._-]`` replaced by ``_``; a category named ``good`` or ``combined`` gets a ``_defect``
suffix so it cannot be mistaken for those folders.

Masks are rasterised with the pixel-centre rule: a pixel is on when its centre lies inside a
shape (a box ``(x, y, w, h)`` covers columns ``ceil(x - 0.5)`` to ``ceil(x + w - 0.5) - 1``, so a
box on whole pixels covers exactly those pixels); every shape covers at least one pixel, so tiny
defects do not vanish from the mask.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ._files import place_file
from .model import Dataset, Shape, unique_export_names

__all__ = ["write_mvtec", "rasterize_mask", "folder_name"]

COMBINED = "combined"


def folder_name(category: str) -> str:
    """A safe folder name for a category."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", category).strip("._") or "defect"
    return f"{name}_defect" if name.lower() in ("good", COMBINED) else name


def _fill_polygon(mask: np.ndarray, points: list[list[float]]) -> None:
    """Set the pixels whose centres lie inside ``points`` (even-odd rule, scanline).

    Written out because PIL's and OpenCV's polygon fills include the outline and truncate
    fractional vertices, which grows every mask by up to a pixel on each side.
    """
    height, width = mask.shape
    pts = np.asarray(points, dtype=float)
    xa, ya = pts[:, 0], pts[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    first = max(0, math.ceil(ya.min() - 0.5))
    last = min(height, math.ceil(ya.max() - 0.5))
    for row in range(first, last):
        cy = row + 0.5
        crossing = ((ya <= cy) & (cy < yb)) | ((yb <= cy) & (cy < ya))
        if not crossing.any():
            continue
        t = (cy - ya[crossing]) / (yb[crossing] - ya[crossing])
        xs = np.sort(xa[crossing] + t * (xb[crossing] - xa[crossing]))
        for left, right in zip(xs[0::2], xs[1::2], strict=False):
            c0 = max(0, math.ceil(left - 0.5))
            c1 = min(width, math.ceil(right - 0.5))
            if c1 > c0:
                mask[row, c0:c1] = 255


def rasterize_mask(shapes: list[Shape], width: int, height: int) -> Image.Image:
    """The union of ``shapes`` as a mode-L 0/255 mask of ``width`` x ``height``."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for shape in shapes:
        x, y, w, h = shape.box
        # Work in the shape's own window so a big image does not cost a full layer per shape;
        # integer offsets keep pixel centres where they were.
        c0 = min(max(math.floor(x) - 1, 0), width - 1)
        r0 = min(max(math.floor(y) - 1, 0), height - 1)
        c1 = min(max(math.ceil(x + w) + 1, c0 + 1), width)
        r1 = min(max(math.ceil(y + h) + 1, r0 + 1), height)
        layer = np.zeros((r1 - r0, c1 - c0), dtype=np.uint8)
        if shape.kind == "polygon" and shape.points and len(shape.points) >= 3:
            _fill_polygon(layer, [[px - c0, py - r0] for px, py in shape.points])
        else:
            layer[
                max(0, math.ceil(y - 0.5) - r0) : math.ceil(y + h - 0.5) - r0,
                max(0, math.ceil(x - 0.5) - c0) : math.ceil(x + w - 0.5) - c0,
            ] = 255
        if not layer.any():
            # Thinner than a pixel: keep the defect visible as the pixel under its centre.
            cx = min(max(int(x + w / 2), c0), c1 - 1) - c0
            cy = min(max(int(y + h / 2), r0), r1 - 1) - r0
            layer[cy, cx] = 255
        region = mask[r0:r1, c0:c1]
        np.maximum(region, layer, out=region)
    return Image.fromarray(mask)  # uint8 2-D: mode L


def write_mvtec(dataset: Dataset, out_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Write the MVTec-AD layout; returns the image count per folder (``"train/good"``, ...).

    Images without a ``path`` raise ``ValueError``: this layout is only useful with pixels.
    """
    out = Path(out_dir)
    names = unique_export_names(dataset.images)
    by_image = dataset.shapes_by_image()
    counts: Counter[str] = Counter()
    for im in dataset.images:
        if im.path is None:
            raise ValueError(f"image {im.key!r} has no file to copy")
        shapes = by_image.get(im.key, [])
        name = names[im.key]
        if not shapes:
            folder = "train/good" if im.split == "train" else "test/good"
            place_file(Path(im.path), out / folder / name)
            counts[folder] += 1
            continue
        cats = {s.category for s in shapes}
        defect = folder_name(next(iter(cats))) if len(cats) == 1 else COMBINED
        place_file(Path(im.path), out / "test" / defect / name)
        mask_path = out / "ground_truth" / defect / f"{PurePosixPath(name).stem}_mask.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        rasterize_mask(shapes, im.width, im.height).save(mask_path)
        counts[f"test/{defect}"] += 1
    return dict(counts)
