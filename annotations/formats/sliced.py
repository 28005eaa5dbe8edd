"""Sliced (tiled) COCO export for small-object training, built on SAHI's slicing.

SAHI decides the layout and what each slice keeps: windows come from
``sahi.slicing.get_slice_bboxes`` (``slice_size`` square, ``overlap`` ratio, the last row/column
shifted back inside the image so every window is full size when the image is large enough; an
image smaller than a slice is one window of its own size), and each shape is kept in a window
when ``sahi.slicing.process_coco_annotations`` keeps it, i.e. when the visible part is at least
``min_area_ratio`` of the shape's area. The kept geometry is the shape clipped to the window,
shifted to window coordinates: boxes come from SAHI's float bbox; polygons are clipped with
shapely here because SAHI truncates polygon vertices to whole pixels.

Negative slices (no shape kept) are sampled in the splits named by ``sample_splits`` (default
train only: val and test keep every negative slice, so evaluation sees the real share of
background and counts false positives honestly). Sampling follows PaddleDetection's
``empty_ratio``: ``negative_ratio`` is the share of negatives among the slices written, so
``negatives = positives * r / (1 - r)`` (at most all of them); ``r >= 1`` keeps all negatives,
``r == 0`` none. Sampling uses ``random.Random(f"{seed}:{split}")`` over the sorted candidates, so
it is repeatable. A window that cuts through a shape but keeps none of it (the visible part is
under the ratio) is **not** a negative candidate: it shows part of a defect, and calling it
background would teach the detector to ignore defect edges. Slices of one image stay in that
image's split.

``slice_dataset`` does the geometry only (fast, no pixels); ``write_sliced_coco`` also crops and
writes the slice images and a COCO JSON per split (each image entry carries ``source_file_name``
and ``slice_box`` ``[x0, y0, x1, y1]`` in source pixels).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image
from sahi.slicing import get_slice_bboxes, process_coco_annotations
from sahi.utils.coco import CocoAnnotation
from shapely.errors import GEOSException
from shapely.geometry import Polygon
from shapely.geometry import box as shapely_box

from . import coco  # the module, not its names: see the note at the end of registry.py
from .model import Dataset, DatasetImage, Shape, unique_export_names
from .registry import Option, exporter

__all__ = ["SliceWindow", "SlicedDataset", "slice_dataset", "write_sliced_coco", "slice_windows"]

DEFAULT_SLICE_SIZE = 640  # the PP-YOLOE-SOD sliced-training settings
DEFAULT_OVERLAP = 0.25
DEFAULT_MIN_AREA_RATIO = 0.1  # SAHI's default
DEFAULT_NEGATIVE_RATIO = 0.1


@dataclass(frozen=True)
class SliceWindow:
    """Where a slice comes from: the source image key and ``[x0, y0, x1, y1)`` in its pixels."""

    source_key: str
    x0: int
    y0: int
    x1: int
    y1: int


@dataclass
class SlicedDataset:
    """The slices as a dataset (slice images have ``path=None`` until written) plus counts."""

    dataset: Dataset
    windows: dict[str, SliceWindow] = field(default_factory=dict)
    positive: int = 0
    negative_candidates: int = 0
    negative_kept: int = 0
    partial_only: int = 0  # windows cutting a shape whose visible part was under the ratio


def slice_windows(
    width: int,
    height: int,
    *,
    slice_size: int = DEFAULT_SLICE_SIZE,
    overlap: float = DEFAULT_OVERLAP,
) -> list[list[int]]:
    """SAHI's windows ``[x0, y0, x1, y1]`` for an image of ``width`` x ``height``."""
    if slice_size <= 0:
        raise ValueError("slice_size must be positive")
    if not 0 <= overlap < 1:
        raise ValueError("overlap must be in [0, 1)")
    return get_slice_bboxes(
        image_height=height,
        image_width=width,
        slice_height=slice_size,
        slice_width=slice_size,
        auto_slice_resolution=False,
        overlap_height_ratio=overlap,
        overlap_width_ratio=overlap,
    )


def _sahi_annotation(shape: Shape) -> CocoAnnotation:
    if shape.kind == "polygon" and shape.points:
        flat = [v for p in shape.points for v in p]
        return CocoAnnotation.from_coco_segmentation([flat], category_id=0, category_name="")
    return CocoAnnotation.from_coco_bbox(list(shape.box), category_id=0, category_name="")


def _clip_polygon(points: list[list[float]], window: list[int]) -> list[list[list[float]]]:
    poly = Polygon(points)
    if not poly.is_valid:
        poly = poly.buffer(0)  # self-intersections: the usual repair
    inter = poly.intersection(shapely_box(*window))
    geoms = getattr(inter, "geoms", [inter])
    parts = []
    for g in geoms:
        if isinstance(g, Polygon) and g.area > 0:
            coords = list(g.exterior.coords)[:-1]
            parts.append([[x - window[0], y - window[1]] for x, y in coords])
    return parts


def _slice_shapes(
    shape: Shape, sahi_ann: CocoAnnotation, window: list[int], slice_key: str, min_area_ratio: float
) -> tuple[list[Shape], bool]:
    """(shapes kept in ``window``, whether the window touches the shape at all)."""
    if not (
        shape.box[0] < window[2]
        and shape.box[1] < window[3]
        and shape.box[0] + shape.box[2] > window[0]
        and shape.box[1] + shape.box[3] > window[1]
    ):
        return [], False
    try:
        kept = process_coco_annotations([sahi_ann], window, min_area_ratio)
    except (GEOSException, ValueError, ZeroDivisionError):
        return [], True
    if not kept:
        return [], True
    if shape.kind == "polygon" and shape.points:
        parts = _clip_polygon(shape.points, window)
        return [Shape.from_polygon(slice_key, shape.category, p) for p in parts], True
    x, y, w, h = (float(v) for v in kept[0].bbox)
    return [Shape.from_box(slice_key, shape.category, (x, y, w, h))], True


def slice_dataset(
    dataset: Dataset,
    *,
    slice_size: int = DEFAULT_SLICE_SIZE,
    overlap: float = DEFAULT_OVERLAP,
    min_area_ratio: float = DEFAULT_MIN_AREA_RATIO,
    negative_ratio: float = DEFAULT_NEGATIVE_RATIO,
    seed: int | str = 0,
    sample_splits: tuple[str, ...] = ("train",),
) -> SlicedDataset:
    """Cut every image into SAHI windows and clip its shapes; sample negative slices.

    Pure geometry: no image is opened. See the module docstring for the rules.
    """
    if negative_ratio < 0:
        raise ValueError("negative_ratio must be >= 0")
    names = unique_export_names(dataset.images)
    by_image = dataset.shapes_by_image()
    result = SlicedDataset(Dataset(categories=list(dataset.categories)))
    positives: dict[str, list[tuple[DatasetImage, list[Shape]]]] = {}
    candidates: dict[str, list[DatasetImage]] = {}
    for im in dataset.images:
        stem = PurePosixPath(names[im.key]).stem
        suffix = PurePosixPath(names[im.key]).suffix
        shapes = by_image.get(im.key, [])
        sahi_anns = [_sahi_annotation(s) for s in shapes]
        for window in slice_windows(im.width, im.height, slice_size=slice_size, overlap=overlap):
            x0, y0, x1, y1 = (int(v) for v in window)
            tag = f"{x0}_{y0}_{x1}_{y1}"
            key = f"{im.key}#{tag}"
            kept: list[Shape] = []
            touched = False
            for shape, ann in zip(shapes, sahi_anns, strict=True):
                got, touches = _slice_shapes(shape, ann, [x0, y0, x1, y1], key, min_area_ratio)
                kept += got
                touched |= touches
            tile = DatasetImage(
                key=key,
                file_name=f"{stem}_{tag}{suffix}",
                width=x1 - x0,
                height=y1 - y0,
                split=im.split,
                is_negative=not kept,
            )
            result.windows[key] = SliceWindow(im.key, x0, y0, x1, y1)
            if kept:
                positives.setdefault(im.split, []).append((tile, kept))
            elif touched:
                result.partial_only += 1
            else:
                candidates.setdefault(im.split, []).append(tile)
    for split in dataset.splits():
        pos = positives.get(split, [])
        pool = sorted(candidates.get(split, []), key=lambda t: t.key)
        if negative_ratio >= 1 or split not in sample_splits:
            take = len(pool)
        else:
            take = min(len(pool), int(len(pos) * negative_ratio / (1 - negative_ratio)))
        chosen = random.Random(f"{seed}:{split}").sample(pool, take)
        chosen_keys = {t.key for t in chosen}
        result.positive += len(pos)
        result.negative_candidates += len(pool)
        result.negative_kept += take
        for tile, shapes in pos:
            result.dataset.images.append(tile)
            result.dataset.shapes += shapes
        result.dataset.images += [t for t in pool if t.key in chosen_keys]
    kept_keys = {t.key for t in result.dataset.images}
    result.windows = {k: w for k, w in result.windows.items() if k in kept_keys}
    return result


def write_sliced_coco(
    dataset: Dataset,
    out_dir: str | os.PathLike[str],
    *,
    slice_size: int = DEFAULT_SLICE_SIZE,
    overlap: float = DEFAULT_OVERLAP,
    min_area_ratio: float = DEFAULT_MIN_AREA_RATIO,
    negative_ratio: float = DEFAULT_NEGATIVE_RATIO,
    seed: int | str = 0,
    sample_splits: tuple[str, ...] = ("train",),
    image_format: str = "png",
) -> tuple[SlicedDataset, dict[str, Path]]:
    """Slice, crop and write ``images/<split>/<slice>`` and ``annotations/instances_<split>.json``.

    Slices are saved as PNG by default: re-encoding JPEG crops would add a second generation of
    compression artefacts, exactly where small defects live. Every image needs a ``path``.
    """
    sliced = slice_dataset(
        dataset,
        slice_size=slice_size,
        overlap=overlap,
        min_area_ratio=min_area_ratio,
        negative_ratio=negative_ratio,
        seed=seed,
        sample_splits=sample_splits,
    )
    out = Path(out_dir)
    sources = {im.key: im for im in dataset.images}
    suffix = "." + image_format.lower().lstrip(".")
    by_source: dict[str, list[DatasetImage]] = {}
    for tile in sliced.dataset.images:
        tile.file_name = str(PurePosixPath(tile.file_name).with_suffix(suffix))
        by_source.setdefault(sliced.windows[tile.key].source_key, []).append(tile)
    for source_key, tiles in by_source.items():
        src = sources[source_key]
        if src.path is None:
            raise ValueError(f"image {source_key!r} has no file to slice")
        with Image.open(src.path) as img:
            img.load()
            for tile in tiles:
                w = sliced.windows[tile.key]
                target = out / "images" / tile.split / tile.file_name
                target.parent.mkdir(parents=True, exist_ok=True)
                img.crop((w.x0, w.y0, w.x1, w.y1)).save(target)
                tile.path = target
    written: dict[str, Path] = {}
    source_names = unique_export_names(dataset.images)
    for split in sliced.dataset.splits():
        part = sliced.dataset.subset(split)
        data = coco.to_coco_dict(part, info={"description": "Sliced export by Loupe"})
        for entry, tile in zip(data["images"], part.images, strict=True):
            w = sliced.windows[tile.key]
            entry["source_file_name"] = source_names[w.source_key]
            entry["slice_box"] = [w.x0, w.y0, w.x1, w.y1]
        path = out / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        written[split] = path
    return sliced, written


# The options an export job accepts (the API's words; defaults are the ones above).
SLICED_OPTIONS = (
    Option("slice_size", int, DEFAULT_SLICE_SIZE, lambda v: 32 <= v <= 8192, "between 32 and 8192"),
    Option("overlap", float, DEFAULT_OVERLAP, lambda v: 0 <= v < 1, "at least 0 and below 1"),
    Option(
        "min_area_ratio", float, DEFAULT_MIN_AREA_RATIO, lambda v: 0 <= v <= 1, "between 0 and 1"
    ),
    Option("negative_ratio", float, DEFAULT_NEGATIVE_RATIO, lambda v: v >= 0, "at least 0"),
)


@exporter("sliced_coco", label="Sliced COCO (SAHI tiles)", options=SLICED_OPTIONS)
def export_sliced_coco(
    dataset: Dataset,
    out_dir: Path,
    *,
    slice_size: int,
    overlap: float,
    min_area_ratio: float,
    negative_ratio: float,
) -> dict[str, dict[str, int]]:
    """Registry entry: ``write_sliced_coco``; the slice counts as ``slices``."""
    sliced, _ = write_sliced_coco(
        dataset,
        out_dir,
        slice_size=slice_size,
        overlap=overlap,
        min_area_ratio=min_area_ratio,
        negative_ratio=negative_ratio,
    )
    return {
        "slices": {
            "positive": sliced.positive,
            "negative_kept": sliced.negative_kept,
            "negative_candidates": sliced.negative_candidates,
            "partial_only": sliced.partial_only,
        }
    }
