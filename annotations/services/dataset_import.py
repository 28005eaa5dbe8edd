"""Imports of labelled datasets: COCO, YOLO and MVTec AD (every format of the formats registry).

One job kind (``dataset_import``, ``cpu`` queue) for every format: the zip (or, for site admins,
a folder on the server under LOUPE_IMPORT_ROOTS) is unpacked through ``inspection.ziputil``'s
checks, read by the format's importer into the neutral ``Dataset``, then each image is stored
like an upload and its labels go in through ``labels.labels_import``. Nothing is all-or-nothing:
every refused file, image or label is reported with its reason, the rest is imported.
"""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage

from annotations.formats import FormatError, Skipped
from annotations.formats.registry import OptionError, get_importer, import_choices
from annotations.services.categories import category_get_or_create
from annotations.services.labels import LabelIn, labels_import
from inspection.models import Image, Job, Project, Role
from inspection.permissions import require_role
from inspection.selectors import import_path_allowed
from inspection.services.images import IncomingFile, image_store_one, images_enqueue_derivatives
from inspection.services.jobs import job_enqueue
from inspection.services.references import (
    references_pair,
    references_pair_by_name,
    references_propose,
)
from inspection.ziputil import ZipRejected, safe_extract_tree

JOB_KIND = "dataset_import"
MAX_REPORT_ITEMS = 2000  # per list in a job result; the totals are always exact

ProgressFn = Callable[[float, str], None]


def _no_progress(_fraction: float, _message: str) -> None:
    pass


def import_formats() -> dict[str, str]:
    """Import format name -> what people call it."""
    return dict(import_choices())


def dataset_import_enqueue(
    *, user, project: Project, fmt: str, upload=None, path: str | None = None
) -> Job:
    """Start importing an uploaded zip, or a server folder (site admins), into ``project``
    (project admins). ``fmt``: a registered importer (coco, yolo, mvtec)."""
    require_role(user, project, Role.ADMIN)
    try:
        get_importer(fmt)
    except OptionError as exc:
        raise ValidationError({exc.field: str(exc)}) from None
    if upload is not None and path:
        raise ValidationError("Give a zip file or a server path, not both.")
    if upload is None and not path:
        raise ValidationError("Give a zip file or a server path.")
    if path:
        payload = {"path": str(import_path_allowed(user, path)), "name": Path(path).name}
    else:
        # through storage, so that a worker on another machine can read it
        name = default_storage.save(f"projects/{project.pk}/imports/{uuid.uuid4()}.zip", upload)
        payload = {"zip": name, "name": getattr(upload, "name", "upload.zip")}
    payload["format"] = fmt
    return job_enqueue(kind=JOB_KIND, user=user, project=project, payload=payload)


def _items(rows: list) -> list[dict[str, str]]:
    return [{"item": r.item, "reason": r.reason} for r in rows[:MAX_REPORT_ITEMS]]


def _skip(item: str, reason: Any) -> Skipped:
    if isinstance(reason, ValidationError):
        reason = " ".join(reason.messages)
    return Skipped(item, str(reason))


def dataset_import_run(
    *,
    user,
    project: Project,
    fmt: str,
    archive: Path | None = None,
    folder: Path | None = None,
    source_name: str = "",
    progress: ProgressFn = _no_progress,
    build_pyramids: bool = True,
) -> dict[str, Any]:
    """Import a zip (``archive``) or a folder in format ``fmt`` into ``project``; return the
    report (project admins). The stored images' pyramid job
    is started at the end, also when the import stops half-way (unless ``build_pyramids`` is
    false).

    Never raises for bad items: every refused image, label or file is in ``skipped`` with its
    reason, items changed on the way in (clipped boxes) in ``adjusted``. A zip or folder that
    cannot be read at all raises ``FormatError``.
    """
    require_role(user, project, Role.ADMIN)
    importer = get_importer(fmt)
    with tempfile.TemporaryDirectory(prefix="loupe-import-") as tmp:
        progress(0.0, "Unpacking and checking the files")
        refused: list[Skipped] = []
        if archive is not None:
            try:
                extracted = safe_extract_tree(
                    archive,
                    tmp,
                    max_entries=settings.LOUPE_ZIP_MAX_ENTRIES,
                    max_total_bytes=settings.LOUPE_ZIP_MAX_TOTAL_BYTES,
                    max_ratio=settings.LOUPE_ZIP_MAX_RATIO,
                )
            except ZipRejected as exc:
                raise FormatError(str(exc)) from exc
            refused = [Skipped(name, reason) for name, reason in extracted.skipped]
            root = Path(tmp)  # each importer steps into a lone top folder itself
        elif folder is not None:
            root = Path(folder)
        else:
            raise ValueError("give archive or folder")
        report = importer.read(root)
        return _store(
            user=user,
            project=project,
            fmt=fmt,
            report=report,
            skipped=refused + list(report.skipped),
            source=importer.label_source,
            group=f"import {source_name}".strip()[:100],
            progress=progress,
            build_pyramids=build_pyramids,
        )


def _store_reference(*, user, project, im, group: str, skipped: list) -> int | None:
    """Store an imported image's reference (or find it: one template may serve many images);
    its id, or None when it was refused (reported)."""
    outcome = image_store_one(
        project=project,
        user=user,
        incoming=IncomingFile(im.reference_name or im.reference_path.name, im.reference_path),
        is_normal=True,  # a golden sample / template shows the part without defects
        source_group=(f"{im.group or group} references").strip()[:100],
    )
    if outcome.status == "rejected":
        skipped.append(_skip(f"{im.key} (its reference)", outcome.reason))
        return None
    return outcome.image_id if outcome.status == "stored" else outcome.duplicate_of


def _store(
    *, user, project, fmt, report, skipped, source, group, progress, build_pyramids
) -> dict[str, Any]:
    ds = report.dataset
    shapes_by_image = ds.shapes_by_image()
    used_names = {s.category for s in ds.shapes}
    categories: dict[str, Any] = {}
    created, matched = [], []
    for cat in ds.categories:
        if cat.name not in used_names or cat.name.lower() in categories:
            continue
        existed = project.categories.filter(name__iexact=cat.name).first()
        try:
            categories[cat.name.lower()] = existed or category_get_or_create(
                project=project, name=cat.name
            )
        except ValidationError as exc:
            skipped.append(_skip(f"category {cat.name}", exc))
            continue
        (matched if existed else created).append(categories[cat.name.lower()].name)
    stored_ids: list[int] = []
    pairs: list[tuple[int, int]] = []
    reference_ids: set[int] = set()
    counts = Counter()
    total = max(len(ds.images), 1)
    try:
        for index, im in enumerate(ds.images):
            progress(0.1 + 0.85 * index / total, f"Storing {im.file_name}")
            outcome = image_store_one(
                project=project,
                user=user,
                incoming=IncomingFile(im.file_name, Path(im.path)),
                is_normal=im.is_negative,
                split=im.split if im.split in Image.Split.values else "",
                source_group=(im.group or group)[:100],
            )
            if outcome.status == "rejected":
                skipped.append(_skip(im.key, outcome.reason))
                continue
            if outcome.status == "duplicate":
                counts["duplicates"] += 1
                skipped.append(_skip(im.key, f"{outcome.reason}; its labels were not imported"))
                continue
            stored_ids.append(outcome.image_id)
            counts["images"] += 1
            counts["negatives"] += int(im.is_negative)
            if im.reference_path is not None:
                reference_id = _store_reference(
                    user=user, project=project, im=im, group=group, skipped=skipped
                )
                if reference_id is not None:
                    if reference_id not in stored_ids and reference_id not in reference_ids:
                        stored_ids.append(reference_id)  # its pyramid
                    reference_ids.add(reference_id)
                    pairs.append((outcome.image_id, reference_id))
            shapes = shapes_by_image.get(im.key, [])
            if not shapes:
                continue
            image = Image.objects.select_related("project").get(pk=outcome.image_id)
            if (image.width, image.height) != (im.width, im.height):
                skipped.append(
                    _skip(
                        im.key,
                        f"the image is stored as {image.width}x{image.height} (EXIF orientation) "
                        f"but labelled as {im.width}x{im.height}; its labels were not imported",
                    )
                )
                continue
            labels, numbers = [], []
            for n, shape in enumerate(shapes, 1):
                category = categories.get(shape.category.lower())
                if category is None:
                    skipped.append(_skip(f"{im.key} label {n}", "its category was not imported"))
                    continue
                labels.append(LabelIn(category, shape.to_geometry()))
                numbers.append(n)
            stored, refused = labels_import(user=user, image=image, labels=labels, source=source)
            counts["annotations"] += stored
            for index_in_batch, reason in refused:
                skipped.append(_skip(f"{im.key} label {numbers[index_in_batch - 1]}", reason))
    finally:
        # also when the import stops half-way: stored images still get their pyramids and
        # their references
        if pairs:
            images = Image.objects.in_bulk({i for pair in pairs for i in pair})
            paired, refused = references_pair(
                user=user,
                project=project,
                pairs=[(images[a], images[b]) for a, b in pairs if a in images and b in images],
            )
            counts["paired"] = paired
            for name, reason in refused:
                skipped.append(_skip(f"{name} (its reference)", reason))
        # the images the file did not pair: by the project's file-name rule, as an upload
        # pairs them, then the most similar reference is proposed to the rest
        explicit = {a for a, _ in pairs} | reference_ids
        rest = [i for i in stored_ids if i not in explicit]
        if rest:
            paired, refused = references_pair_by_name(
                user=user, project=project, images=list(Image.objects.filter(pk__in=rest))
            )
            counts["paired"] += paired
            for name, reason in refused:
                skipped.append(_skip(f"{name} (its reference)", reason))
            unpaired = list(
                Image.objects.filter(
                    pk__in=rest, reference__isnull=True, is_reference=False
                ).values_list("id", flat=True)
            )
            if unpaired and project.images.filter(is_reference=True).exists():
                references_propose(user=user, project=project, image_ids=unpaired)
        if stored_ids and build_pyramids:
            images_enqueue_derivatives(user=user, project=project, image_ids=stored_ids)
    progress(1.0, "done")
    return {
        "format": fmt,
        "images": counts["images"],
        "negatives": counts["negatives"],
        "annotations": counts["annotations"],
        "duplicates": counts["duplicates"],
        "paired": counts["paired"],
        "categories_created": created,
        "categories_matched": matched,
        "skipped_count": len(skipped),
        "adjusted_count": len(report.adjusted),
        "skipped": _items(skipped),
        "adjusted": _items(report.adjusted),
        "message": (
            f"{counts['images']} images ({counts['negatives']} normal), "
            f"{counts['annotations']} labels"
            + (f", {counts['paired']} paired with a reference" if counts["paired"] else "")
            + f"; {counts['duplicates']} duplicates, "
            f"{len(skipped)} skipped, {len(report.adjusted)} adjusted"
        ),
    }
