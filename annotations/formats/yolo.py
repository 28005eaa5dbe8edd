"""YOLO (Ultralytics layout): detection boxes or segmentation polygons.

Export layout (``write_yolo``)::

    data.yaml                 names (index -> name), nc, train/val/test image folders
    images/<split>/<name>     the image files
    labels/<split>/<stem>.txt one line per shape; an EMPTY file for images without shapes
    references/<split>/<stem>.<ext>  the image's reference (golden sample, template), when it
                              has one (Loupe's extension; Ultralytics ignores the folder)

Detection lines are ``class cx cy w h`` and segmentation lines ``class x1 y1 x2 y2 ...``, all
normalised by the image width/height (so 0..1), six decimals. In the segmentation flavour a box
is written as its four corners. ``data.yaml`` has no ``path`` key by default: Ultralytics then
resolves the folders relative to the YAML file, which keeps the export relocatable (pass
``path=`` to pin an absolute root). Ultralytics insists on a ``val`` entry, so when the dataset
has no val split it points at the test (else the train) images; the reader lists such images
once.

Reading (``read_yolo``) never raises for bad data. Policies:

* Lines with the wrong number of fields, non-numbers, values outside [0, 1] (beyond a 1e-6
  rounding tolerance), zero-size boxes and class ids not in ``names`` are skipped, each with its
  file and line number. A box whose centre/size are valid but whose edges stick out of the image
  is clipped and listed in ``adjusted``.
* An image with an empty label file is a negative. An image WITHOUT a label file is imported as a
  negative too, as Ultralytics treats it (background), and listed in ``adjusted`` so nobody is
  surprised; pass ``missing_labels="skip"`` to refuse such images instead.
* A label file without an image is skipped. Files whose names are not valid UTF-8 are skipped.
* ``flavour="auto"`` accepts both line kinds (5 fields = box, 1 + 2n fields with n >= 3 =
  polygon); ``"detect"`` and ``"segment"`` accept only their own kind.
"""

from __future__ import annotations

import math
import os
from glob import escape as glob_escape
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from ._files import IMAGE_SUFFIXES, find_root, image_size, place_file
from .model import (
    Category,
    Dataset,
    DatasetImage,
    ImportReport,
    Shape,
    clip_box,
    is_valid_text,
    polygon_area,
    safe_relative_name,
    unique_export_names,
)
from .registry import exporter, importer

__all__ = ["write_yolo", "read_yolo", "yolo_label_lines"]

Flavour = Literal["detect", "segment"]
_EPS = 1e-6


# --- writing -------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def yolo_label_lines(
    shapes: list[Shape], image: DatasetImage, class_ids: dict[str, int], flavour: Flavour
) -> list[str]:
    """The label-file lines for one image's shapes (pure; useful for tests and previews)."""
    w, h = float(image.width), float(image.height)
    lines = []
    for shape in shapes:
        cls = class_ids[shape.category]
        if flavour == "segment":
            coords = []
            for x, y in shape.polygon():
                coords += [_fmt(min(max(x / w, 0.0), 1.0)), _fmt(min(max(y / h, 0.0), 1.0))]
            lines.append(" ".join([str(cls), *coords]))
        else:
            bx, by, bw, bh = clip_box(shape.box, image.width, image.height)
            vals = ((bx + bw / 2) / w, (by + bh / 2) / h, bw / w, bh / h)
            lines.append(" ".join([str(cls), *(_fmt(v) for v in vals)]))
    return lines


def write_yolo(
    dataset: Dataset,
    out_dir: str | os.PathLike[str],
    *,
    flavour: Flavour = "detect",
    copy_images: bool = True,
    path: str | None = None,
) -> Path:
    """Write the Ultralytics layout under ``out_dir``; returns the ``data.yaml`` path.

    Class ids are the categories' positions in ``dataset.categories``. File names are made
    unique across the dataset (Ultralytics pairs image and label by stem).
    """
    if flavour not in ("detect", "segment"):
        raise ValueError(f"unknown YOLO flavour {flavour!r}; use 'detect' or 'segment'")
    out = Path(out_dir)
    class_ids = {c.name: n for n, c in enumerate(dataset.categories)}
    unknown = {s.category for s in dataset.shapes} - set(class_ids)
    if unknown:
        raise ValueError(f"shapes use categories not in the dataset: {sorted(unknown)}")
    names = unique_export_names(dataset.images)
    by_image = dataset.shapes_by_image()
    splits = dataset.splits() or ["train"]
    for split in splits:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    for im in dataset.images:
        name = names[im.key]
        lines = yolo_label_lines(by_image.get(im.key, []), im, class_ids, flavour)
        label = out / "labels" / im.split / f"{PurePosixPath(name).stem}.txt"
        label.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        if copy_images and im.path is not None:
            place_file(Path(im.path), out / "images" / im.split / name)
        if copy_images and im.reference_path is not None:
            ref = PurePosixPath(name).stem + Path(im.reference_path).suffix.lower()
            place_file(Path(im.reference_path), out / "references" / im.split / ref)
    data: dict[str, Any] = {}
    if path:
        data["path"] = path
    for split in splits:
        data[split] = f"images/{split}"
    if "val" not in data:
        data["val"] = data.get("test", data.get("train", "images/train"))
    data["nc"] = len(dataset.categories)
    data["names"] = {n: c.name for n, c in enumerate(dataset.categories)}
    header = (
        f"# Exported by Loupe ({flavour}). Folders are relative to this file"
        + (" (no 'path' key)." if not path else ".")
        + "\n"
    )
    yaml_path = out / "data.yaml"
    yaml_path.write_text(
        header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return yaml_path


@exporter("yolo_detect", label="YOLO detection (Ultralytics)")
def export_yolo_detect(dataset: Dataset, out_dir: Path) -> dict[str, Any]:
    """Registry entry: boxes, ``class cx cy w h``."""
    write_yolo(dataset, out_dir, flavour="detect")
    return {}


@exporter("yolo_segment", label="YOLO segmentation (Ultralytics)")
def export_yolo_segment(dataset: Dataset, out_dir: Path) -> dict[str, Any]:
    """Registry entry: polygons, ``class x1 y1 ...`` (boxes as their four corners)."""
    write_yolo(dataset, out_dir, flavour="segment")
    return {}


# --- reading -------------------------------------------------------------------------------------


def _find_yaml(root: Path) -> Path | None:
    for pattern in ("data.yaml", "data.yml", "*.yaml", "*.yml", "*/data.yaml", "*/*.yaml"):
        hits = sorted(p for p in root.glob(pattern) if p.is_file())
        if hits:
            return hits[0]
    return None


def _read_names(data: dict[str, Any]) -> dict[int, str] | str:
    names = data.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        return "data.yaml has no 'names' (a list or an index -> name mapping)"
    out: dict[int, str] = {}
    for k, v in names.items():
        try:
            idx = int(k)
        except (TypeError, ValueError):
            return f"data.yaml names: {k!r} is not a class index"
        if not isinstance(v, str | int) or str(v).strip() == "":
            return f"data.yaml names: class {idx} has no name"
        out[idx] = str(v).strip()
    return out


def _label_path(image: Path, root: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder becomes ``labels``, suffix ``.txt``."""
    parts = list(image.relative_to(root).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return (root / Path(*parts)).with_suffix(".txt")


def _reference_of(image: Path, root: Path) -> Path | None:
    """The image's reference: the last ``images`` folder becomes ``references``, same stem,
    any image suffix (Loupe's extension of the layout)."""
    parts = list(image.relative_to(root).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "references"
            break
    else:
        return None
    folder = (root / Path(*parts)).parent
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.glob(f"{glob_escape(image.stem)}.*")):
        if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
            return candidate
    return None


def _listed_images(
    entry: str, base: Path, root: Path, report: ImportReport, where: str
) -> list[Path]:
    """Images named by one train/val/test entry: a folder, or a .txt list of image paths."""
    if not safe_relative_name(entry):
        report.skip(where, f"the folder {entry!r} leaves the dataset (absolute or '..')")
        return []
    target = (base / entry).resolve()
    if root not in target.parents and target != root:
        report.skip(where, f"the folder {entry!r} leaves the dataset")
        return []
    if target.is_dir():
        return sorted(
            p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    if target.is_file() and target.suffix == ".txt":
        out = []
        for line in target.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
            line = line.strip()
            if not line:
                continue
            rel = line[2:] if line.startswith("./") else line
            p = (target.parent / rel).resolve() if safe_relative_name(rel) else None
            if p is None or root not in p.parents:
                report.skip(f"{target.name}: {line}", "the path leaves the dataset")
                continue
            out.append(p)
        return out
    report.skip(where, f"the folder {entry!r} does not exist")
    return []


def read_yolo(
    root: str | os.PathLike[str],
    *,
    flavour: Literal["auto", "detect", "segment"] = "auto",
    missing_labels: Literal["negative", "skip"] = "negative",
) -> ImportReport:
    """Read an Ultralytics-layout folder (``data.yaml`` at its top or one folder down)."""
    root = Path(root).resolve()
    report = ImportReport()
    yaml_path = _find_yaml(root)
    if yaml_path is None:
        report.skip(root.name, "no data.yaml was found")
        return report
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        report.skip(yaml_path.name, "data.yaml is not valid UTF-8 text")
        return report
    except yaml.YAMLError as exc:
        report.skip(yaml_path.name, f"data.yaml is not valid YAML ({exc.__class__.__name__})")
        return report
    if not isinstance(data, dict):
        report.skip(yaml_path.name, "data.yaml is not a mapping of keys to values")
        return report
    names = _read_names(data)
    if isinstance(names, str):
        report.skip(yaml_path.name, names)
        return report
    report.dataset.categories = [Category(name=n, id=i) for i, n in sorted(names.items())]
    base = yaml_path.parent
    declared = data.get("path")
    if isinstance(declared, str) and declared and not Path(declared).is_absolute():
        # A relative 'path' may be re-rooted under the YAML's folder; an absolute one is the
        # exporting machine's folder and means nothing here.
        if safe_relative_name(declared) and (base / declared).is_dir():
            base = (base / declared).resolve()

    seen: dict[Path, str] = {}
    claimed_labels: set[Path] = set()
    label_dirs: set[Path] = set()
    # val last: when val merely repeats another split's folder (Ultralytics needs a val entry,
    # our exporter points it at test or train), the images keep that other split.
    for split in ("train", "test", "val"):
        entries = data.get(split)
        if entries is None:
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, str):
                report.skip(f"data.yaml: {split}", f"{entry!r} is not a folder name")
                continue
            entry_dir = (base / entry).resolve() if safe_relative_name(entry) else None
            if entry_dir is not None and root in entry_dir.parents and entry_dir.suffix != ".txt":
                # So orphan labels are found even when the image folder itself is missing.
                label_dirs.add(_label_path(entry_dir / "_.jpg", root).parent)
            for image_path in _listed_images(entry, base, root, report, f"data.yaml: {split}"):
                if image_path in seen:
                    continue  # e.g. val pointing at the train folder: the image is read once
                seen[image_path] = split
                label = _label_path(image_path, root)
                label_dirs.add(label.parent)
                claimed_labels.add(label)
                _read_one(image_path, label, split, names, flavour, missing_labels, root, report)
    if not seen:
        report.skip(yaml_path.name, "data.yaml lists no images under train/val/test")
    for folder in sorted(label_dirs):
        if not folder.is_dir():
            continue
        for label in sorted(folder.glob("*.txt")):
            if label not in claimed_labels:
                report.skip(_rel(label, root), "the label file has no image")
    return report


def _rel(path: Path, root: Path) -> str:
    text = path.relative_to(root).as_posix()
    return text if is_valid_text(text) else ascii(text)


def _read_one(
    image_path: Path,
    label: Path,
    split: str,
    names: dict[int, str],
    flavour: str,
    missing_labels: str,
    root: Path,
    report: ImportReport,
) -> None:
    where = _rel(image_path, root)
    if not is_valid_text(image_path.name):
        report.skip(where, "the file name is not valid UTF-8 text")
        return
    size = image_size(image_path)
    if isinstance(size, str):
        report.skip(where, size)
        return
    image = DatasetImage(
        key=image_path.relative_to(root).as_posix(),
        file_name=image_path.name,
        width=size[0],
        height=size[1],
        split=split,
        path=image_path,
    )
    reference = _reference_of(image_path, root)
    if reference is not None:
        size = image_size(reference)
        if isinstance(size, str):
            report.adjust(where, f"its reference {_rel(reference, root)}: {size}; not paired")
        else:
            image.reference_path, image.reference_name = reference, reference.name
    if not label.is_file():
        if missing_labels == "skip":
            report.skip(where, "the image has no label file")
            return
        image.is_negative = True
        report.dataset.images.append(image)
        report.adjust(where, "the image has no label file; imported as a negative (no defects)")
        return
    report.dataset.images.append(image)
    lines = label.read_bytes().splitlines()
    label_name = _rel(label, root)
    count = 0
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        count += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            report.skip(f"{label_name} line {n}", "the line is not valid UTF-8 text")
            continue
        shape = _parse_line(text, image, names, flavour, f"{label_name} line {n}", report)
        if shape is not None:
            report.dataset.shapes.append(shape)
    image.is_negative = count == 0


def _parse_line(
    text: str,
    image: DatasetImage,
    names: dict[int, str],
    flavour: str,
    where: str,
    report: ImportReport,
) -> Shape | None:
    fields = text.split()
    n = len(fields)
    is_box = n == 5
    is_poly = n >= 7 and n % 2 == 1
    if flavour == "detect" and not is_box:
        report.skip(where, f"expected 5 fields (class cx cy w h), got {n}")
        return None
    if flavour == "segment" and not is_poly:
        report.skip(
            where, f"expected class and at least 3 x y pairs (an odd count >= 7), got {n} fields"
        )
        return None
    if not (is_box or is_poly):
        report.skip(
            where,
            f"wrong number of fields ({n}): expected 5 (class cx cy w h) or an odd count >= 7 "
            "(class x1 y1 x2 y2 x3 y3 ...)",
        )
        return None
    try:
        cls_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        report.skip(where, "a field is not a number")
        return None
    if not cls_value.is_integer() or int(cls_value) not in names:
        report.skip(where, f"class id {fields[0]} is not in data.yaml names")
        return None
    category = names[int(cls_value)]
    if not all(math.isfinite(v) for v in values):
        report.skip(where, "a value is not a finite number")
        return None
    bad = [v for v in values if v < -_EPS or v > 1 + _EPS]
    if bad:
        report.skip(where, f"value {bad[0]:g} is outside [0, 1] (coordinates must be normalised)")
        return None
    values = [min(max(v, 0.0), 1.0) for v in values]
    w, h = image.width, image.height
    if is_box:
        cx, cy, bw, bh = values
        if bw <= 0 or bh <= 0:
            report.skip(where, "the box has zero width or height")
            return None
        box = ((cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h)
        clipped = clip_box(box, w, h)
        if any(abs(a - b) > 1e-3 for a, b in zip(clipped, box, strict=True)):
            report.adjust(where, "the box reaches outside the image; clipped to it")
        return Shape.from_box(image.key, category, clipped)
    points = [[values[i] * w, values[i + 1] * h] for i in range(0, len(values), 2)]
    if polygon_area(points) <= 0:
        report.skip(where, "the polygon has no area")
        return None
    return Shape.from_polygon(image.key, category, points)


@importer("yolo", label="YOLO (Ultralytics)", label_source="import")
def import_yolo(root: Path) -> ImportReport:
    """Registry entry: ``read_yolo`` (detection and segmentation lines both accepted) on the
    folder, or on its one top folder."""
    return read_yolo(find_root(root))
