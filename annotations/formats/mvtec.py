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
shape (a box ``(x, y, w, h)`` covers columns ``round(x)`` to ``round(x + w) - 1``); every shape
covers at least one pixel, so tiny defects do not vanish from the mask.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath

from PIL import Image, ImageDraw

from ._files import place_file
from .model import Dataset, Shape, unique_export_names

__all__ = ["write_mvtec", "rasterize_mask", "folder_name"]

COMBINED = "combined"


def folder_name(category: str) -> str:
    """A safe folder name for a category."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", category).strip("._") or "defect"
    return f"{name}_defect" if name.lower() in ("good", COMBINED) else name


def rasterize_mask(shapes: list[Shape], width: int, height: int) -> Image.Image:
    """The union of ``shapes`` as a mode-L 0/255 mask of ``width`` x ``height``."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for shape in shapes:
        if shape.kind == "polygon" and shape.points and len(shape.points) >= 3:
            # PIL puts integer coordinates on pixel centres; ours are on pixel corners.
            draw.polygon([(x - 0.5, y - 0.5) for x, y in shape.points], fill=255)
        x, y, w, h = shape.box
        x0, y0 = min(max(round(x), 0), width - 1), min(max(round(y), 0), height - 1)
        x1, y1 = max(round(x + w) - 1, x0), max(round(y + h) - 1, y0)
        if shape.kind == "box" or not shape.points:
            draw.rectangle([x0, y0, min(x1, width - 1), min(y1, height - 1)], fill=255)
        elif not mask.crop((x0, y0, x1 + 1, y1 + 1)).getbbox():
            # A sliver thinner than a pixel: keep it visible as its centre pixel.
            mask.putpixel((min(int(x + w / 2), width - 1), min(int(y + h / 2), height - 1)), 255)
    return mask


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
