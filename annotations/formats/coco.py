"""COCO detection/segmentation JSON: write one file per split, read with per-item validation.

(About 570 lines, over the ~500 of docs/architecture.md on purpose: the writer and the reader
share the id, bbox and segmentation conventions below, and most of the length is the reader's
per-item checks, each with the message a user sees; split in two they would drift apart.)

Export layout (``write_coco``)::

    annotations/instances_<split>.json
    images/<split>/<file_name>

Writing: ``bbox`` is ``[x, y, w, h]`` in pixels (same convention as the model), ``area`` is the
polygon area for polygons and ``w * h`` for boxes, ``iscrowd`` is 0, ``segmentation`` is
``[[x1, y1, x2, y2, ...]]`` for polygons and ``[]`` for boxes (so a box reads back as a box, not
as a four-point polygon). Category ids are the categories' own ids when all are set and unique,
otherwise 1..N in order. Image ids are 1..N in dataset order.

Reading (``read_coco`` / ``read_coco_folder``) never raises for bad data; each refused item is in
the report with its reason. Policies:

* A box partly outside its image is **clipped** to the image and listed in ``adjusted``; a box
  entirely outside (nothing left after clipping) is skipped. Polygon points are clamped to the
  image the same way.
* Images, categories or annotations with a missing id are skipped. A duplicated image or
  category id skips every entry that uses it (one cannot tell which one an annotation means) and
  the annotations that refer to it; a duplicated annotation id keeps the first and skips the rest.
* Width/height must be positive whole numbers; when ``images_dir`` is given the file must exist,
  be a readable image, and have exactly that size.
* Names with bytes that are not UTF-8 (the file is decoded with surrogate escapes, so only the
  affected items fail) and file names that leave the images folder are skipped.
* An image with no annotations is imported as a negative (``is_negative=True``).
* RLE segmentations (crowd masks) import as their box, noted in ``adjusted``; a multi-part
  polygon becomes one polygon shape per part.

Why ~570 lines in one module: the registry keeps one module per format, and the writer and the
reader share the id and geometry conventions above; most of the length is the reader refusing
bad items one by one, each with its own reason.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from ._files import IMAGE_SUFFIXES, find_root, image_size, place_file
from .model import (
    SPLITS,
    Category,
    Dataset,
    DatasetImage,
    ImportReport,
    Shape,
    clip_box,
    is_finite_number,
    is_valid_text,
    polygon_area,
    polygon_bounds,
    safe_relative_name,
    unique_export_names,
)
from .registry import exporter, importer

__all__ = ["to_coco_dict", "write_coco", "read_coco", "read_coco_folder", "category_ids"]

#: Loupe's COCO extension: an image's reference (golden sample, template, 'before' picture),
#: a path relative to the dataset's root like ``file_name``.
REFERENCE_FIELD = "reference_file_name"
#: Other datasets' names for the same thing, read on import (DeepPCB: ``template_file_name``).
REFERENCE_ALIASES = ("template_file_name",)


# --- writing -------------------------------------------------------------------------------------


def category_ids(dataset: Dataset) -> dict[str, int]:
    """Category name -> COCO id: the categories' own ids when all are set and unique, else 1..N."""
    ids = [c.id for c in dataset.categories]
    if all(isinstance(i, int) and i > 0 for i in ids) and len(set(ids)) == len(ids):
        return {c.name: int(c.id) for c in dataset.categories}  # type: ignore[arg-type]
    return {c.name: n for n, c in enumerate(dataset.categories, start=1)}


def _round(value: float) -> float | int:
    # Keep integers integral in the JSON and limit float noise to a hundredth of a pixel's
    # thousandth, which is far below anything an annotator can draw.
    r = round(float(value), 3)
    return int(r) if r == int(r) else r


def to_coco_dict(
    dataset: Dataset,
    *,
    file_names: dict[str, str] | None = None,
    info: dict[str, Any] | None = None,
    reference_names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The COCO dict for all images of ``dataset`` (call ``dataset.subset(split)`` for one split).

    ``file_names`` maps image key -> the ``file_name`` to write (default: the image's own);
    ``reference_names`` image key -> its reference's path in the export (``reference_file_name``).
    Shapes whose category is not in ``dataset.categories`` raise ``ValueError``: the caller
    built an inconsistent dataset, which is a bug, not bad user input.
    """
    cat_ids = category_ids(dataset)
    images, annotations = [], []
    image_ids: dict[str, int] = {}
    for n, im in enumerate(dataset.images, start=1):
        image_ids[im.key] = n
        entry = {
            "id": n,
            "file_name": (file_names or {}).get(im.key, im.file_name),
            "width": int(im.width),
            "height": int(im.height),
        }
        if reference_names and im.key in reference_names:
            entry[REFERENCE_FIELD] = reference_names[im.key]
        images.append(entry)
    ann_id = 0
    for shape in dataset.shapes:
        if shape.image_key not in image_ids:
            raise ValueError(
                f"shape refers to image {shape.image_key!r}, which is not in the dataset"
            )
        if shape.category not in cat_ids:
            raise ValueError(f"shape uses category {shape.category!r}, which is not in the dataset")
        ann_id += 1
        if shape.kind == "polygon" and shape.points:
            segmentation = [[_round(v) for p in shape.points for v in p]]
            box = polygon_bounds(shape.points)
            area = polygon_area(shape.points)
        else:
            segmentation = []
            box, area = shape.box, shape.box[2] * shape.box[3]
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_ids[shape.image_key],
                "category_id": cat_ids[shape.category],
                "bbox": [_round(v) for v in box],
                "area": _round(area),
                "segmentation": segmentation,
                "iscrowd": 0,
            }
        )
    categories = [
        {"id": cat_ids[c.name], "name": c.name, "supercategory": "defect"}
        for c in dataset.categories
    ]
    return {
        "info": info or {"description": "Exported by Loupe"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(
    dataset: Dataset, out_dir: str | os.PathLike[str], *, copy_images: bool = True
) -> dict[str, Path]:
    """Write ``annotations/instances_<split>.json`` for every split used, and (when
    ``copy_images``) each image's file to ``images/<split>/``. Returns split -> JSON path.

    File names are made unique across the whole dataset (``a.png``, ``a_2.png``) so that images
    of different splits can be merged back without collisions. Images without a ``path`` are
    written to the JSON only.
    """
    out = Path(out_dir)
    names = unique_export_names(dataset.images)
    references = _reference_names(dataset)
    written: dict[str, Path] = {}
    if copy_images:
        placed: set[str] = set()
        for im in dataset.images:
            name = references.get(im.key)
            if name and name not in placed and im.reference_path is not None:
                place_file(Path(im.reference_path), out / name)
                placed.add(name)
    for split in dataset.splits():
        part = dataset.subset(split)
        coco = to_coco_dict(part, file_names=names, reference_names=references)
        path = out / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")
        written[split] = path
        if copy_images:
            for im in part.images:
                if im.path is not None:
                    place_file(Path(im.path), out / "images" / split / names[im.key])
    return written


def _reference_names(dataset: Dataset) -> dict[str, str]:
    """Image key -> ``references/<name>`` for images with a reference; a reference shared by
    several images is written once, names made unique (``a.png``, ``a_2.png``)."""
    by_file: dict[str, str] = {}
    taken: set[str] = set()
    out: dict[str, str] = {}
    for im in dataset.images:
        if im.reference_path is None and not im.reference_name:
            continue
        source = str(im.reference_path or im.reference_name)
        if source not in by_file:
            base = PurePosixPath(im.reference_name or Path(source).name)
            name, n = base.name, 1
            while name.lower() in taken:
                n += 1
                name = f"{base.stem}_{n}{base.suffix}"
            taken.add(name.lower())
            by_file[source] = f"references/{name}"
        out[im.key] = by_file[source]
    return out


@exporter("coco", label="COCO JSON per split")
def export_coco(dataset: Dataset, out_dir: Path) -> dict[str, Any]:
    """Registry entry: ``write_coco`` with the images."""
    write_coco(dataset, out_dir)
    return {}


# --- reading -------------------------------------------------------------------------------------


@importer("coco", label="COCO JSON", label_source="import")
def import_coco(root: Path) -> ImportReport:
    """Registry entry: ``read_coco_folder`` on the folder, or on its one top folder."""
    return read_coco_folder(find_root(root))


def _split_from_name(name: str) -> str:
    low = name.lower()
    for split, words in (("train", ("train",)), ("val", ("val",)), ("test", ("test",))):
        if any(w in low for w in words):
            return split
    return "train"


def read_coco_folder(root: str | os.PathLike[str]) -> ImportReport:
    """Read every ``*.json`` under ``root`` as a COCO file, the split taken from its name
    (``instances_val.json`` -> val; no split word -> train), images looked up under ``root``.

    The same image file listed by two JSON files is imported once (the second is skipped).
    """
    root = Path(root)
    files = sorted(p for p in root.rglob("*.json") if p.is_file())
    report = ImportReport()
    if not files:
        report.skip(root.name or str(root), "no COCO JSON file (*.json) was found")
        return report
    seen: dict[str, str] = {}
    index = _ImageIndex(root)
    for path in files:
        part = read_coco(path, root, split=_split_from_name(path.name), _index=index)
        dropped = set()
        for im in part.dataset.images:
            if im.key in seen:
                part.skip(
                    f"{path.name}: image {im.file_name}",
                    f"the same image file is already listed in {seen[im.key]}",
                )
                dropped.add(im.key)
            else:
                seen[im.key] = path.name
        if dropped:
            part.dataset.images = [im for im in part.dataset.images if im.key not in dropped]
            part.dataset.shapes = [s for s in part.dataset.shapes if s.image_key not in dropped]
        report.merge(part)
    return report


class _ImageIndex:
    """Finds image files under a folder by relative path, or by base name when the JSON's
    ``file_name`` does not match the layout (e.g. CVAT zips put images one folder deeper)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._by_name: dict[str, list[Path]] | None = None

    def find(self, file_name: str) -> Path | None:
        direct = (self.root / file_name).resolve()
        if self.root in direct.parents and direct.is_file():
            return direct
        if self._by_name is None:
            self._by_name = {}
            for p in self.root.rglob("*"):
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    self._by_name.setdefault(p.name, []).append(p)
        hits = self._by_name.get(PurePosixPath(file_name).name, [])
        # An ambiguous base name would silently pick a wrong image; treat as not found.
        return hits[0] if len(hits) == 1 else None

    def key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _load_json(path: Path, report: ImportReport) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        report.skip(path.name, f"the file cannot be read ({exc.strerror or exc})")
        return None
    # Surrogate escapes let a file with a few non-UTF-8 names parse; those items fail alone.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        report.skip(
            path.name,
            f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
        )
        return None
    except RecursionError:
        report.skip(path.name, "not valid JSON: nested too deeply")
        return None


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value != ""
    )


def _is_positive_int(value: Any) -> bool:
    if isinstance(value, bool) or not is_finite_number(value):
        return False
    return value > 0 and float(value).is_integer()


def read_coco(
    annotation_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    *,
    split: str = "train",
    _index: _ImageIndex | None = None,
) -> ImportReport:
    """Read one COCO JSON file; validate every image, category and annotation.

    With ``images_dir`` each image's file is looked up (by its ``file_name`` relative to the
    folder, else by base name anywhere under it), checked to be a readable image of the size the
    JSON states, and its ``path`` set; the image key is its path relative to ``images_dir``.
    Without it, the JSON alone is checked and the key is the ``file_name``.
    """
    path = Path(annotation_file)
    report = ImportReport()
    data = _load_json(path, report)
    if data is None:
        return report
    src = path.name
    if not isinstance(data, dict):
        report.skip(src, "not a COCO file: the top level is not a JSON object")
        return report
    for section in ("images", "annotations", "categories"):
        if not isinstance(data.get(section, []), list):
            report.skip(src, f"not a COCO file: '{section}' is not a list")
            return report
    if "images" not in data:
        report.skip(src, "not a COCO file: it has no 'images' list")
        return report
    index = _index or (_ImageIndex(Path(images_dir)) if images_dir is not None else None)

    categories = _read_categories(data.get("categories", []), src, report)
    images = _read_images(data["images"], src, split, index, report)
    _read_annotations(data.get("annotations", []), src, images, categories, report)

    with_shapes = {s.image_key for s in report.dataset.shapes}
    for im in report.dataset.images:
        im.is_negative = im.key not in with_shapes
    return report


def _read_categories(entries: list[Any], src: str, report: ImportReport) -> dict[Any, str | None]:
    """Category id -> name; ``None`` for ids that were refused (so annotations say why)."""
    ids = Counter(e.get("id") for e in entries if isinstance(e, dict) and _is_id(e.get("id")))
    out: dict[Any, str | None] = {}
    names: set[str] = set()
    for n, entry in enumerate(entries):
        where = f"{src}: category #{n + 1}"
        if not isinstance(entry, dict):
            report.skip(where, "the category is not a JSON object")
            continue
        cid, name = entry.get("id"), entry.get("name")
        if not _is_id(cid):
            report.skip(where, "the category has no id")
            continue
        where = f"{src}: category id {cid}"
        if ids[cid] > 1:
            report.skip(where, f"category id {cid} is used by {ids[cid]} categories")
            out[cid] = None
            continue
        if not isinstance(name, str) or not name.strip():
            report.skip(where, "the category has no name")
            out[cid] = None
            continue
        if not is_valid_text(name):
            report.skip(where, f"the category name {name!r} is not valid UTF-8 text")
            out[cid] = None
            continue
        name = name.strip()
        if name in names:
            # Two ids, one name: Loupe matches categories by name, so both mean the same one.
            report.adjust(where, f"the name {name!r} is used by another category too; merged")
            out[cid] = name
            continue
        names.add(name)
        out[cid] = name
        report.dataset.categories.append(
            Category(name=name, id=cid if isinstance(cid, int) else None)
        )
    return out


def _read_images(
    entries: list[Any],
    src: str,
    split: str,
    index: _ImageIndex | None,
    report: ImportReport,
) -> dict[Any, DatasetImage | None]:
    """Image id -> image; ``None`` for ids that were refused."""
    ids = Counter(e.get("id") for e in entries if isinstance(e, dict) and _is_id(e.get("id")))
    out: dict[Any, DatasetImage | None] = {}
    keys: dict[str, Any] = {}
    for n, entry in enumerate(entries):
        where = f"{src}: image #{n + 1}"
        if not isinstance(entry, dict):
            report.skip(where, "the image entry is not a JSON object")
            continue
        iid, file_name = entry.get("id"), entry.get("file_name")
        if isinstance(file_name, str) and is_valid_text(file_name):
            where = f"{src}: image {file_name}"
        if not _is_id(iid):
            report.skip(where, "the image has no id")
            continue
        where = f"{where} (id {iid})"
        if ids[iid] > 1:
            report.skip(where, f"image id {iid} is used by {ids[iid]} images")
            out[iid] = None
            continue
        out[iid] = None
        if not isinstance(file_name, str) or not file_name:
            report.skip(where, "the image has no file_name")
            continue
        if not is_valid_text(file_name):
            report.skip(where, f"the file name {file_name!r} is not valid UTF-8 text")
            continue
        if not safe_relative_name(file_name):
            report.skip(where, "the file name leaves the images folder (absolute or '..')")
            continue
        width, height = entry.get("width"), entry.get("height")
        if not _is_positive_int(width) or not _is_positive_int(height):
            report.skip(
                where,
                f"width and height must be positive whole numbers, got {width!r} x {height!r}",
            )
            continue
        width, height = int(width), int(height)
        key, found = file_name.replace("\\", "/"), None
        if index is not None:
            found = index.find(file_name)
            if found is None:
                report.skip(where, "the image file is missing (or its name is ambiguous)")
                continue
            size = image_size(found)
            if isinstance(size, str):
                report.skip(where, size)
                continue
            if size != (width, height):
                report.skip(
                    where,
                    f"the image file is {size[0]}x{size[1]} but the JSON says {width}x{height}",
                )
                continue
            key = index.key(found)
        if key in keys:
            report.skip(where, f"the same image file is already listed as image id {keys[key]}")
            continue
        keys[key] = iid
        image = DatasetImage(
            key=key,
            file_name=PurePosixPath(file_name.replace("\\", "/")).name,
            width=width,
            height=height,
            split=split if split in SPLITS else "train",
            path=found,
        )
        _read_reference(entry, image, index, where, report)
        out[iid] = image
        report.dataset.images.append(image)
    return out


def _read_reference(
    entry: dict, image: DatasetImage, index: _ImageIndex | None, where: str, report: ImportReport
) -> None:
    """The image's reference from ``reference_file_name`` (or DeepPCB's ``template_file_name``);
    a missing or unreadable reference is noted in ``adjusted`` and the image imported alone."""
    name = next(
        (entry[f] for f in (REFERENCE_FIELD, *REFERENCE_ALIASES) if isinstance(entry.get(f), str)),
        None,
    )
    if not name:
        return
    if not is_valid_text(name) or not safe_relative_name(name):
        report.adjust(where, "its reference's file name is not usable; imported without one")
        return
    image.reference_name = PurePosixPath(name.replace("\\", "/")).name
    if index is None:
        return
    found = index.find(name)
    reason = "the file is missing" if found is None else image_size(found)
    if isinstance(reason, str):
        report.adjust(where, f"its reference {name}: {reason}; imported without a reference")
        image.reference_name = ""
        return
    image.reference_path = found


def _polygon_parts(segmentation: Any) -> list[list[list[float]]] | str | None:
    """Polygons as point lists; ``None`` when there are none; a reason when malformed."""
    if segmentation in (None, [], {}):
        return None
    if isinstance(segmentation, dict):
        return "rle"
    if not isinstance(segmentation, list):
        return "the segmentation is neither a list of polygons nor an RLE mask"
    parts = []
    for poly in segmentation:
        if not isinstance(poly, list) or not all(is_finite_number(v) for v in poly):
            return "a segmentation polygon is not a list of numbers"
        if len(poly) % 2 or len(poly) < 6:
            return (
                f"a segmentation polygon needs an even count of at least 6 numbers, got {len(poly)}"
            )
        parts.append([[float(poly[i]), float(poly[i + 1])] for i in range(0, len(poly), 2)])
    return parts


def _read_annotations(
    entries: list[Any],
    src: str,
    images: dict[Any, DatasetImage | None],
    categories: dict[Any, str | None],
    report: ImportReport,
) -> None:
    seen: set[Any] = set()
    for n, entry in enumerate(entries):
        where = f"{src}: annotation #{n + 1}"
        if not isinstance(entry, dict):
            report.skip(where, "the annotation is not a JSON object")
            continue
        aid = entry.get("id")
        if not _is_id(aid):
            report.skip(where, "the annotation has no id")
            continue
        where = f"{src}: annotation id {aid}"
        if aid in seen:
            report.skip(where, f"annotation id {aid} is used more than once; the first was kept")
            continue
        seen.add(aid)
        iid, cid = entry.get("image_id"), entry.get("category_id")
        if iid not in images:
            report.skip(where, f"it refers to image id {iid!r}, which is not in the file")
            continue
        image = images[iid]
        if image is None:
            report.skip(where, f"its image (id {iid}) was skipped")
            continue
        if cid not in categories:
            report.skip(where, f"it refers to category id {cid!r}, which is not in the file")
            continue
        category = categories[cid]
        if category is None:
            report.skip(where, f"its category (id {cid}) was skipped")
            continue
        parts = _polygon_parts(entry.get("segmentation"))
        if isinstance(parts, str) and parts != "rle":
            report.skip(where, parts)
            continue
        if isinstance(parts, list):
            _add_polygons(parts, image, category, where, report)
            continue
        bbox = entry.get("bbox")
        if not (
            isinstance(bbox, list) and len(bbox) == 4 and all(is_finite_number(v) for v in bbox)
        ):
            report.skip(where, "the bbox is not a list of 4 numbers [x, y, width, height]")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            report.skip(where, f"the box has zero or negative size ({w:g} x {h:g})")
            continue
        clipped = clip_box((x, y, w, h), image.width, image.height)
        if clipped[2] <= 0 or clipped[3] <= 0:
            report.skip(
                where,
                f"the box [{x:g}, {y:g}, {w:g}, {h:g}] lies entirely outside the "
                f"{image.width}x{image.height} image",
            )
            continue
        if clipped != (x, y, w, h):
            report.adjust(
                where,
                f"the box [{x:g}, {y:g}, {w:g}, {h:g}] reaches outside the "
                f"{image.width}x{image.height} image; clipped to it",
            )
        if parts == "rle":
            report.adjust(where, "an RLE (crowd) mask was imported as its bounding box")
        report.dataset.shapes.append(Shape.from_box(image.key, category, clipped))


def _add_polygons(
    parts: list[list[list[float]]],
    image: DatasetImage,
    category: str,
    where: str,
    report: ImportReport,
) -> None:
    added = 0
    for points in parts:
        clamped = [
            [min(max(x, 0.0), float(image.width)), min(max(y, 0.0), float(image.height))]
            for x, y in points
        ]
        if polygon_area(clamped) <= 0 or math.isclose(polygon_area(clamped), 0.0):
            continue
        if clamped != points:
            report.adjust(
                where,
                f"polygon points outside the {image.width}x{image.height} image were moved "
                "onto its edge",
            )
        report.dataset.shapes.append(Shape.from_polygon(image.key, category, clamped))
        added += 1
    if not added:
        report.skip(where, "the polygon has no area inside the image")
    elif len(parts) > 1:
        report.adjust(where, f"a polygon in {len(parts)} parts was imported as {added} shapes")
