"""MVTec-AD layout: the one owner of its rules, with a writer and a reader.

::

    train/good/<name>                        defect-free images of the train split
    test/good/<name>                         defect-free images of the other splits
    test/<category>/<name>                   images with shapes (any split: MVTec's train set
                                             holds only good images)
    ground_truth/<category>/<stem>_mask.png  0/255 single-channel mask, the image's size

Rules shared by the writer, the reader (``read_mvtec``) and ``workers.anomaly.datasets`` (they
live in ``mvtec_layout.py``, which loads nothing else):

* image files: any suffix in ``IMAGE_SUFFIXES``, in any case (``.PNG`` too); dot files are not
  images (``list_images``);
* a defect image's mask is ``ground_truth/<type>/<stem>_mask.<ext>`` or ``<stem>.<ext>`` (any
  image suffix, any case), found by the image's exact stem, never by sorted order
  (``mask_candidates``, ``match_masks``); two candidates for one image, or one mask named by two
  images, is ambiguous and never guessed. The writer writes ``<stem>_mask.png``.

Writing (``write_mvtec``): an image whose shapes are all of one category goes to that category's
folder; an image with several categories goes to ``combined`` (the name MVTec AD itself uses). An
image without shapes counts as good. Image files are copied byte for byte, keeping their format
(anomalib matches masks to images by stem). Category names become folder names with characters
outside ``[A-Za-z0-9._-]`` replaced by ``_``; a category named ``good`` or ``combined`` gets a
``_defect`` suffix so it cannot be mistaken for those folders.

Masks are rasterised with the pixel-centre rule: a pixel is on when its centre lies inside a
shape (a box ``(x, y, w, h)`` covers columns ``ceil(x - 0.5)`` to ``ceil(x + w - 0.5) - 1``, so a
box on whole pixels covers exactly those pixels); every shape covers at least one pixel, so tiny
defects do not vanish from the mask.

Reading (``read_mvtec``): ``train/good`` images are negatives of split train; ``test/<type>``
images are split test and NOT negatives, ``test/good`` included (they are for evaluation, so they
stay unlabeled); each defect image's mask becomes polygons of category ``<type>``
(``mask_to_polygons``). Each image's ``group`` is its folder (``"train/good"``, ``"test/crack"``).
Refused one by one, with the reason: unreadable images, unreadable masks, masks whose size is not
the image's, defect images without a mask (the image itself still imports), masks without an
image.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ._files import find_root, image_size, is_image_file, place_file
from .model import (
    Category,
    Dataset,
    DatasetImage,
    ImportReport,
    Shape,
    unique_export_names,
)
from .mvtec_layout import (
    GOOD,
    GROUND_TRUTH,
    TEST,
    TRAIN,
    MvtecLayoutError,
    is_mvtec_root,
    list_images,
    mask_file_name,
    match_masks,
    type_dirs,
)
from .registry import exporter, importer

__all__ = [  # the layout's rules are mvtec_layout's names
    "COMBINED",
    "folder_name",
    "mask_to_polygons",
    "rasterize_mask",
    "read_mvtec",
    "write_mvtec",
]

COMBINED = "combined"


def folder_name(category: str) -> str:
    """A safe folder name for a category."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", category).strip("._") or "defect"
    return f"{name}_defect" if name.lower() in (GOOD, COMBINED) else name


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
            folder = f"{TRAIN}/{GOOD}" if im.split == "train" else f"{TEST}/{GOOD}"
            place_file(Path(im.path), out / folder / name)
            counts[folder] += 1
            continue
        cats = {s.category for s in shapes}
        defect = folder_name(next(iter(cats))) if len(cats) == 1 else COMBINED
        place_file(Path(im.path), out / TEST / defect / name)
        mask_path = out / GROUND_TRUTH / defect / mask_file_name(name)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        rasterize_mask(shapes, im.width, im.height).save(mask_path)
        counts[f"{TEST}/{defect}"] += 1
    return dict(counts)


@exporter("mvtec", label="MVTec AD layout")
def export_mvtec(dataset: Dataset, out_dir: Path) -> dict[str, dict[str, int]]:
    """Registry entry: the layout, with the image count per folder as ``folders``."""
    return {"folders": write_mvtec(dataset, out_dir)}


# --- reading -------------------------------------------------------------------------------------


def mask_to_polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """The outlines of a binary mask's (``mask > 0``) regions, on the pixels' edges.

    One polygon per 8-connected region, outlining exactly its pixels (a one-pixel speck is the
    unit square around it), so rasterising it again with the pixel-centre rule (``write_mvtec``)
    gives the same pixels back. Holes are filled (a region inside another's hole is part of it),
    as an outer contour would. Every outline is a simple polygon (``annotations.geometry`` refuses
    self-touching rings, which OpenCV's contours of thin or diagonal shapes are).
    """
    import cv2  # only readers of masks need OpenCV
    from shapely.geometry import Polygon, box
    from shapely.ops import unary_union

    binary = (np.asarray(mask) > 0).astype(np.uint8)
    # Fill the holes first (background the border cannot reach, 4-connected: the complement of
    # 8-connected regions), so each region is one outline and an island in a hole is inside it.
    outside = np.pad(binary, 1)
    cv2.floodFill(outside, None, (0, 0), 1, flags=4)
    filled = binary | (outside[1:-1, 1:-1] == 0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(filled, connectivity=8)
    outlines = []
    for label in range(1, count):
        x0, y0, w, h = (int(v) for v in stats[label, :4])
        pixels = labels[y0 : y0 + h, x0 : x0 + w] == label
        boxes = [
            box(x0 + start, y0 + row, x0 + end, y0 + row + 1)
            for row, runs in enumerate(_row_runs(pixels))
            for start, end in runs
        ]
        shape = unary_union(boxes)
        if shape.geom_type != "Polygon":
            # pixels that meet only at a corner (8-connected): a 0.05 px mitred rim joins them
            # into one outline, keeping every pixel centre where it was
            shape = shape.buffer(0.05, join_style="mitre")
        outlines.append(_points(Polygon(shape.exterior).simplify(0)))
    return outlines


def _points(polygon) -> list[list[float]]:
    """The ring's points clockwise on screen (y down), from its top-left corner."""
    from shapely.geometry.polygon import orient

    pts = [[round(float(x), 2), round(float(y), 2)] for x, y in orient(polygon).exterior.coords]
    pts = pts[:-1]
    first = min(range(len(pts)), key=lambda i: (pts[i][1], pts[i][0]))
    return pts[first:] + pts[:first]


def _row_runs(pixels: np.ndarray) -> list[list[tuple[int, int]]]:
    """For each row, the [start, end) column ranges of its set pixels."""
    padded = np.zeros((pixels.shape[0], pixels.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = pixels
    edges = np.diff(padded, axis=1)
    out = []
    for row in edges:
        starts = np.flatnonzero(row == 1)
        ends = np.flatnonzero(row == -1)
        out.append(list(zip(starts.tolist(), ends.tolist(), strict=True)))
    return out


def _read_mask(path: Path) -> np.ndarray | str:
    """The mask as a 2-D uint8 array, or a plain-words reason it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))
    except Image.DecompressionBombError:
        return "unreadable mask: too large to open safely (decompression bomb limit)"
    except Exception as exc:  # noqa: BLE001 - one bad mask must never stop the import
        return f"unreadable mask: not a readable image ({exc.__class__.__name__})"


class _Reader:
    """One ``read_mvtec`` pass: adds images, shapes and refusals to ``report``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.report = ImportReport()
        self.categories: set[str] = set()

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def add_image(
        self, path: Path, *, split: str, group: str, negative: bool
    ) -> DatasetImage | None:
        size = image_size(path)
        if isinstance(size, str):
            self.report.skip(self.rel(path), size)
            return None
        image = DatasetImage(
            key=self.rel(path),
            file_name=path.name,
            width=size[0],
            height=size[1],
            split=split,
            is_negative=negative,
            path=path,
            group=group,
        )
        self.report.dataset.images.append(image)
        return image

    def add_mask(self, image: DatasetImage, mask_path: Path, defect_type: str) -> None:
        where = self.rel(mask_path)
        mask = _read_mask(mask_path)
        if isinstance(mask, str):
            self.report.skip(where, mask)
            return
        height, width = mask.shape
        if (width, height) != (image.width, image.height):
            self.report.skip(
                where, f"mask is {width}x{height} but the image is {image.width}x{image.height}"
            )
            return
        polygons = mask_to_polygons(mask)
        if not polygons:
            self.report.adjust(where, "the mask is empty (no defect pixels): no label")
            return
        if defect_type not in self.categories:
            self.categories.add(defect_type)
            self.report.dataset.categories.append(Category(defect_type))
        for points in polygons:
            self.report.dataset.shapes.append(Shape.from_polygon(image.key, defect_type, points))

    def defect_folder(self, type_dir: Path) -> set[Path]:
        """Read ``test/<type>`` with its masks; return the masks it accounted for."""
        defect_type = type_dir.name
        group = f"{TEST}/{defect_type}"
        gt_dir = self.root / GROUND_TRUTH / defect_type
        images = list_images(type_dir)
        match = match_masks(images, gt_dir)
        accounted = set(match.masks.values()) | set(match.shared)
        for found in match.ambiguous.values():
            accounted.update(found)
        shared_by = {img: mask for mask, imgs in match.shared.items() for img in imgs}
        for path in images:
            image = self.add_image(path, split=TEST, group=group, negative=False)
            if image is None:
                continue  # refused above; its mask is not an orphan
            if path in match.masks:
                self.add_mask(image, match.masks[path], defect_type)
            elif path in match.ambiguous:
                names = ", ".join(m.name for m in match.ambiguous[path])
                self.report.skip(
                    self.rel(path), f"several masks match this image ({names}); none was used"
                )
            elif path in shared_by:
                mask = shared_by[path]
                names = ", ".join(p.name for p in match.shared[mask])
                self.report.skip(
                    self.rel(path),
                    f"the mask {mask.name} fits several images ({names}); none got it",
                )
            else:
                self.report.skip(
                    f"{GROUND_TRUTH}/{defect_type}/{mask_file_name(path.name)}",
                    "no ground-truth mask for this defect image",
                )
        return accounted

    def orphan_masks(self, accounted: set[Path]) -> None:
        gt_root = self.root / GROUND_TRUTH
        if not gt_root.is_dir():
            return
        for mask in sorted(gt_root.rglob("*")):
            if mask not in accounted and is_image_file(mask):
                self.report.skip(self.rel(mask), "mask without a matching test image")


def read_mvtec(root: str | os.PathLike[str]) -> ImportReport:
    """Read an MVTec AD folder (see the module docstring for the rules).

    Raises ``MvtecLayoutError`` (a ``FormatError``) when ``root`` has neither ``train/good`` nor
    ``test/``; every other problem is one refused item in the report.
    """
    root = Path(root)
    if not is_mvtec_root(root):
        raise MvtecLayoutError(
            f"'{root.name}' has neither train/good nor test/: not an MVTec AD folder"
        )
    reader = _Reader(root)
    for path in list_images(root / TRAIN / GOOD):
        reader.add_image(path, split=TRAIN, group=f"{TRAIN}/{GOOD}", negative=True)
    accounted: set[Path] = set()
    for type_dir in type_dirs(root):
        if type_dir.name == GOOD:
            for path in list_images(type_dir):
                # for evaluation: neither a negative nor labelled
                reader.add_image(path, split=TEST, group=f"{TEST}/{GOOD}", negative=False)
        else:
            accounted |= reader.defect_folder(type_dir)
    reader.orphan_masks(accounted)
    return reader.report


@importer("mvtec", label="MVTec AD layout", label_source="ground_truth")
def import_mvtec(root: Path) -> ImportReport:
    """Registry entry: ``read_mvtec`` on the folder, or on its one top folder (a zipped
    ``bottle/``; a lone ``train/`` or ``test/`` is the layout itself)."""
    return read_mvtec(find_root(root, layout_names=(TRAIN, TEST, GROUND_TRUTH)))
