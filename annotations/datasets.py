"""Dataset versions: freeze, compare, export and import (services over ``annotations.formats``).

What a freeze takes (see docs/datasets.md):

* Labels: ``review_status == approved``, plus labels accepted from model suggestions (source
  ``suggestion``; accepting is the review) unless sent back; ``include_pending`` adds pending
  labels, ``include_ground_truth`` adds labels of source ``ground_truth`` (MVTec masks) whatever
  their review status. Returned labels are never frozen.
* Images: every image with a frozen label, plus confirmed negatives: images marked normal or with
  the verdict "ok" that have no label at all (a pending label means someone saw a defect, so the
  image is not background).
* Splits: an image whose ``split`` field is set keeps it; then an image keeps the split it had in
  the project's latest version; the rest are assigned by ``formats.splits.assign_splits``
  (seeded, stratified by category) with those fixed ones counted towards the targets.

Exports and imports are background jobs (kinds ``export`` and ``dataset_import``, ``cpu``
queue); their Job rows (who, when, payload, result) are the audit trail.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import uuid
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Max

from annotations.formats import Category, Dataset, DatasetImage, FormatError, ImportReport, Shape
from annotations.formats.splits import DEFAULT_RATIOS, SplitItem, assign_splits
from annotations.formats.versions import content_hash, diff_datasets
from annotations.models import Annotation, DatasetVersion
from inspection import storage
from inspection.models import Image, Job, Project, Role
from inspection.permissions import require_role

logger = logging.getLogger(__name__)

EXPORT_FORMATS = {
    "coco": "COCO JSON per split",
    "yolo_detect": "YOLO detection (Ultralytics)",
    "yolo_segment": "YOLO segmentation (Ultralytics)",
    "sliced_coco": "Sliced COCO (SAHI tiles)",
    "mvtec": "MVTec AD layout",
}
IMPORT_FORMATS = ("coco", "yolo", "mvtec")
MAX_REPORT_ITEMS = 2000  # per list in a job result; the totals are always exact

ProgressFn = Callable[[float, str], None]


def _no_progress(_fraction: float, _message: str) -> None:
    pass


# --- freezing ------------------------------------------------------------------------------------


def _frozen_labels(
    project: Project, *, include_pending: bool, include_ground_truth: bool
) -> list[Annotation]:
    out = []
    qs = (
        Annotation.objects.filter(image__project=project)
        .select_related("category")
        .order_by("image_id", "id")
    )
    for ann in qs:
        if ann.review_status == Annotation.ReviewStatus.RETURNED:
            continue
        if ann.source == Annotation.Source.GROUND_TRUTH:
            if include_ground_truth:
                out.append(ann)
            continue
        # accepted suggestions are approved labels; one edited since by an annotator is
        # pending again and waits for a reviewer like any other label
        if ann.review_status == Annotation.ReviewStatus.APPROVED or include_pending:
            out.append(ann)
    return out


def _check_ratios(ratios: Any) -> dict[str, float]:
    if ratios is None:
        return dict(DEFAULT_RATIOS)
    if not isinstance(ratios, dict) or not ratios:
        raise ValidationError({"ratios": "Give split weights like {'train': 0.8, 'val': 0.1}."})
    unknown = set(ratios) - {"train", "val", "test"}
    if unknown:
        raise ValidationError(
            {"ratios": f"Unknown split(s) {sorted(unknown)}; use train, val, test."}
        )
    try:
        clean = {k: float(v) for k, v in ratios.items()}
    except (TypeError, ValueError):
        raise ValidationError({"ratios": "Split weights must be numbers."}) from None
    if any(v < 0 for v in clean.values()) or sum(clean.values()) <= 0:
        raise ValidationError({"ratios": "Split weights must be >= 0 with a positive sum."})
    return clean


def _counts(dataset: Dataset) -> dict[str, Any]:
    splits: dict[str, dict[str, int]] = {}
    for im in dataset.images:
        row = splits.setdefault(im.split, {"images": 0, "negatives": 0, "shapes": 0})
        row["images"] += 1
        row["negatives"] += int(im.is_negative)
    split_of = {im.key: im.split for im in dataset.images}
    categories: dict[str, dict[str, int]] = {c: {} for c in dataset.category_names()}
    for s in dataset.shapes:
        split = split_of[s.image_key]
        splits[split]["shapes"] += 1
        categories[s.category][split] = categories[s.category].get(split, 0) + 1
    return {
        "images": len(dataset.images),
        "negatives": sum(1 for im in dataset.images if im.is_negative),
        "shapes": len(dataset.shapes),
        "splits": splits,
        "categories": categories,
    }


def dataset_version_freeze(
    *,
    user,
    project: Project,
    note: str = "",
    include_pending: bool = False,
    include_ground_truth: bool = False,
    seed: int = 0,
    ratios: dict[str, float] | None = None,
) -> DatasetVersion:
    """Freeze the project's confirmed labels into a new immutable version (project admins)."""
    require_role(user, project, Role.ADMIN)
    ratios = _check_ratios(ratios)
    labels = _frozen_labels(
        project, include_pending=include_pending, include_ground_truth=include_ground_truth
    )
    by_image: dict[int, list[Annotation]] = defaultdict(list)
    for ann in labels:
        by_image[ann.image_id].append(ann)
    labelled_anywhere = set(
        Annotation.objects.filter(image__project=project).values_list("image_id", flat=True)
    )
    images = []
    for image in Image.objects.filter(project=project).order_by("id"):
        if image.id in by_image:
            images.append((image, False))
        elif image.id not in labelled_anywhere and image.is_normal:
            # normal: uploaded or imported as defect-free, or confirmed OK by a reviewer (an
            # annotator's OK alone is not a confirmation)
            images.append((image, True))
    if not images:
        raise ValidationError(
            "Nothing to freeze: no approved labels and no confirmed normal images yet "
            "(or try include_pending / include_ground_truth)."
        )

    with transaction.atomic():
        # The project row is the lock that makes version numbers unique and the split history
        # consistent when two admins freeze at once (no-op on SQLite, which locks the database).
        Project.objects.select_for_update().filter(pk=project.pk).first()
        last = project.dataset_versions.order_by("-number").first()
        fixed = {}
        if last is not None:
            fixed = {str(im["id"]): im["split"] for im in last.content.get("images", [])}
        for image, _ in images:
            if image.split:
                fixed[str(image.id)] = image.split
        items = [
            SplitItem(
                str(image.id),
                categories=frozenset(a.category.name for a in by_image.get(image.id, [])),
            )
            for image, _ in images
        ]
        splits = assign_splits(items, ratios=ratios, seed=seed, previous=fixed)
        content = {
            "images": [
                {
                    "id": image.id,
                    "file": image.file.name,
                    "file_name": image.original_name,
                    "sha256": image.sha256,
                    "width": image.width,
                    "height": image.height,
                    "split": splits[str(image.id)],
                    "negative": negative,
                }
                for image, negative in images
            ],
            "categories": sorted({a.category.name for a in labels}, key=str.lower),
            "shapes": [
                {
                    "image": a.image_id,
                    "category": a.category.name,
                    "kind": a.kind,
                    "geometry": a.geometry,
                    "annotation": a.id,
                    "source": a.source,
                }
                for a in labels
            ],
        }
        dataset = version_dataset_from_content(content)
        number = (project.dataset_versions.aggregate(n=Max("number"))["n"] or 0) + 1
        return DatasetVersion.objects.create(
            project=project,
            number=number,
            note=note,
            options={
                "include_pending": include_pending,
                "include_ground_truth": include_ground_truth,
                "seed": seed,
                "ratios": ratios,
            },
            content_hash=content_hash(dataset),
            counts=_counts(dataset),
            content=content,
            created_by=user if user is not None and user.is_authenticated else None,
        )


def version_dataset_from_content(content: dict[str, Any]) -> Dataset:
    """The neutral ``Dataset`` of a snapshot (image keys are the image ids as text)."""
    images = [
        DatasetImage(
            key=str(im["id"]),
            file_name=im["file_name"],
            width=im["width"],
            height=im["height"],
            split=im["split"],
            is_negative=im["negative"],
        )
        for im in content.get("images", [])
    ]
    categories = [Category(name, n) for n, name in enumerate(content.get("categories", []), 1)]
    shapes = [
        Shape.from_geometry(str(s["image"]), s["category"], s["geometry"])
        for s in content.get("shapes", [])
    ]
    return Dataset(images, categories, shapes)


def dataset_versions_compare(*, user, old: DatasetVersion, new: DatasetVersion) -> dict[str, Any]:
    """What changed from ``old`` to ``new`` (reviewers and up; both of one project)."""
    if old.project_id != new.project_id:
        raise ValidationError("Both versions must belong to the same project.")
    require_role(user, old.project, Role.REVIEWER)
    diff = diff_datasets(
        version_dataset_from_content(old.content), version_dataset_from_content(new.content)
    )
    return {
        "old": old.number,
        "new": new.number,
        "unchanged": diff.unchanged,
        "same_content_hash": old.content_hash == new.content_hash,
        "added_images": [int(k) for k in diff.added_images],
        "removed_images": [int(k) for k in diff.removed_images],
        "moved_images": [{"image": int(k), "from": a, "to": b} for k, a, b in diff.moved_images],
        "relabelled_images": [int(k) for k in diff.relabelled_images],
        "shapes_added": dict(diff.shapes_added),
        "shapes_removed": dict(diff.shapes_removed),
    }


# --- export --------------------------------------------------------------------------------------


def _clean_export_options(fmt: str, options: dict[str, Any] | None) -> dict[str, Any]:
    if fmt not in EXPORT_FORMATS:
        raise ValidationError(
            {"format": f"Unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}."}
        )
    options = dict(options or {})
    if fmt != "sliced_coco":
        return {}
    spec = {
        "slice_size": (int, 640, lambda v: 32 <= v <= 8192, "between 32 and 8192"),
        "overlap": (float, 0.25, lambda v: 0 <= v < 1, "at least 0 and below 1"),
        "min_area_ratio": (float, 0.1, lambda v: 0 <= v <= 1, "between 0 and 1"),
        "negative_ratio": (float, 0.1, lambda v: v >= 0, "at least 0"),
    }
    unknown = set(options) - set(spec)
    if unknown:
        raise ValidationError({"options": f"Unknown option(s) {sorted(unknown)}."})
    out = {}
    for name, (cast, default, ok, words) in spec.items():
        raw = options.get(name, default)
        try:
            value = cast(raw)
        except (TypeError, ValueError):
            raise ValidationError({name: f"{name} must be a number {words}."}) from None
        if not ok(value):
            raise ValidationError({name: f"{name} must be {words}."})
        out[name] = value
    return out


def dataset_export_enqueue(
    *, user, version: DatasetVersion, fmt: str, options: dict[str, Any] | None = None
) -> Job:
    """Start the background export of a version to a zip (project admins)."""
    from inspection.services.jobs import job_enqueue

    require_role(user, version.project, Role.ADMIN)
    clean = _clean_export_options(fmt, options)
    return job_enqueue(
        kind="export",
        user=user,
        project=version.project,
        payload={
            "version": version.id,
            "version_number": version.number,
            "format": fmt,
            "options": clean,
        },
    )


def _with_local_files(dataset: Dataset, content: dict, tmp: Path) -> list[str]:
    """Point every image at a local file; returns the keys whose file is gone (then dropped)."""
    files = {str(im["id"]): im["file"] for im in content["images"]}
    missing = []
    for im in dataset.images:
        name = files[im.key]
        if not name or not default_storage.exists(name):
            missing.append(im.key)
            continue
        if storage.is_local():
            im.path = Path(default_storage.path(name))
        else:
            local = tmp / "originals" / f"{im.key}{Path(name).suffix}"
            local.parent.mkdir(parents=True, exist_ok=True)
            with default_storage.open(name, "rb") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst)
            im.path = local
    if missing:
        gone = set(missing)
        dataset.images = [im for im in dataset.images if im.key not in gone]
        dataset.shapes = [s for s in dataset.shapes if s.image_key not in gone]
    return missing


def _zip_folder(folder: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())


def dataset_export_run(
    *, version: DatasetVersion, fmt: str, options: dict[str, Any], job_id: str, progress: ProgressFn
) -> dict[str, Any]:
    """Write a version in ``fmt`` to a zip in storage; return what the job records as its result.

    Called by the export job (the permission check happened when it was enqueued).
    """
    from annotations.formats.coco import write_coco
    from annotations.formats.mvtec import write_mvtec
    from annotations.formats.sliced import write_sliced_coco
    from annotations.formats.yolo import write_yolo

    dataset = version_dataset_from_content(version.content)
    with tempfile.TemporaryDirectory(prefix="loupe-export-") as tmp_name:
        tmp = Path(tmp_name)
        progress(0.05, "Collecting image files")
        missing = _with_local_files(dataset, version.content, tmp)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", version.project.name).strip("._") or "dataset"
        out = tmp / f"{stem}-v{version.number}-{fmt}"
        out.mkdir()
        progress(0.2, f"Writing {EXPORT_FORMATS[fmt]}")
        extra: dict[str, Any] = {}
        if fmt == "coco":
            write_coco(dataset, out)
        elif fmt in ("yolo_detect", "yolo_segment"):
            write_yolo(dataset, out, flavour=fmt.split("_", 1)[1])
        elif fmt == "sliced_coco":
            sliced, _ = write_sliced_coco(dataset, out, **options)
            extra["slices"] = {
                "positive": sliced.positive,
                "negative_kept": sliced.negative_kept,
                "negative_candidates": sliced.negative_candidates,
                "partial_only": sliced.partial_only,
            }
        elif fmt == "mvtec":
            extra["folders"] = write_mvtec(dataset, out)
        progress(0.8, "Packing the zip")
        archive = tmp / "export.zip"
        _zip_folder(out, archive)
        size = archive.stat().st_size
        name = f"projects/{version.project_id}/exports/{job_id}.zip"
        with open(archive, "rb") as fh:
            stored = default_storage.save(name, File(fh))
    images = len(dataset.images)
    result = {
        "file": stored,
        "download_name": f"{out.name}.zip",
        "size_bytes": size,
        "format": fmt,
        "version": version.number,
        "content_hash": version.content_hash,
        "images": images,
        "shapes": len(dataset.shapes),
        "missing_images": [int(k) for k in missing],
        **extra,
        "message": f"Exported v{version.number} as {EXPORT_FORMATS[fmt]}: {images} images"
        + (f"; {len(missing)} image files were missing" if missing else ""),
    }
    return result


def dataset_export_job(*, user, job: Job) -> Job:
    """The finished export job ``job`` if ``user`` may download it (reviewers and up)."""
    if job.project is None or job.kind != "export":
        raise ValidationError("This job is not a dataset export.")
    require_role(user, job.project, Role.REVIEWER)
    if job.result.get("expired"):
        raise ValidationError(
            f"This export was deleted {settings.LOUPE_EXPORT_KEEP_DAYS} days after it was made "
            "(LOUPE_EXPORT_KEEP_DAYS); export the version again."
        )
    if job.status != Job.Status.SUCCEEDED or not job.result.get("file"):
        raise ValidationError(f"This export is {job.status}; there is nothing to download yet.")
    return job


def dataset_exports_prune(*, now=None) -> int:
    """Delete the zips of exports finished more than LOUPE_EXPORT_KEEP_DAYS ago; their jobs stay
    (the audit trail) and say the file expired. Returns how many zips were deleted."""
    from datetime import timedelta

    from django.utils import timezone

    days = settings.LOUPE_EXPORT_KEEP_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    old = Job.objects.filter(
        kind="export", status=Job.Status.SUCCEEDED, finished_at__lt=cutoff
    ).exclude(result__has_key="expired")  # not result__expired=True: NULL for other rows
    pruned = 0
    for job in old:
        name = job.result.get("file")
        try:
            if name and default_storage.exists(name):
                default_storage.delete(name)
                pruned += 1
        except OSError:  # storage hiccup: try again at the next sweep, never fail the caller
            logger.exception("could not delete expired export %s", name)
            continue
        note = f" (file expired after {days} days)"
        result = {**job.result, "file": "", "expired": True}
        result["message"] = f"{result.get('message', 'Exported')}{note}"
        Job.objects.filter(pk=job.pk).update(result=result, message=f"{job.message}{note}")
    return pruned


# --- import --------------------------------------------------------------------------------------


def dataset_import_enqueue(*, user, project: Project, fmt: str, upload) -> Job:
    """Store an uploaded zip and start the import job (project admins).

    ``fmt`` is ``coco`` (JSON files + images), ``yolo`` (data.yaml, images/, labels/) or
    ``mvtec`` (handed to the MVTec AD importer, job kind ``import_mvtec``).
    """
    from inspection.services.jobs import job_enqueue

    require_role(user, project, Role.ADMIN)
    if fmt not in IMPORT_FORMATS:
        raise ValidationError(
            {"format": f"Unknown import format '{fmt}'; use one of {', '.join(IMPORT_FORMATS)}."}
        )
    # through storage, so that a worker on another machine can read it
    name = default_storage.save(f"projects/{project.pk}/imports/{uuid.uuid4()}.zip", upload)
    payload = {"zip": name, "name": getattr(upload, "name", "upload.zip")}
    if fmt == "mvtec":
        return job_enqueue(kind="import_mvtec", user=user, project=project, payload=payload)
    payload["format"] = fmt
    return job_enqueue(kind="dataset_import", user=user, project=project, payload=payload)


def _items(rows: list) -> list[dict[str, str]]:
    return [{"item": r.item, "reason": r.reason} for r in rows[:MAX_REPORT_ITEMS]]


def dataset_import_run(
    *,
    user,
    project: Project,
    archive: Path,
    fmt: str,
    source_name: str = "",
    progress: ProgressFn = _no_progress,
) -> dict[str, Any]:
    """Import a COCO or YOLO zip into ``project``; return the report (project admins).

    Never raises for bad items: every refused image, label or file is in ``skipped`` with its
    reason, items changed on the way in (clipped boxes) in ``adjusted``. A zip that cannot be
    read at all raises ``FormatError``.
    """
    from annotations.geometry import GeometryError, normalize_geometry
    from annotations.services import category_get_or_create
    from inspection.services.images import IncomingFile, image_store_one

    require_role(user, project, Role.ADMIN)
    with tempfile.TemporaryDirectory(prefix="loupe-import-") as tmp:
        progress(0.0, "Unpacking and checking the files")
        from annotations.formats.archives import read_zip

        report: ImportReport = read_zip(
            archive,
            tmp,
            fmt=fmt,
            max_entries=settings.LOUPE_ZIP_MAX_ENTRIES,
            max_total_bytes=settings.LOUPE_ZIP_MAX_TOTAL_BYTES,
            max_ratio=settings.LOUPE_ZIP_MAX_RATIO,
        )
        ds = report.dataset
        skipped = list(report.skipped)
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
        counts = Counter()
        group = f"import {source_name}".strip()[:100]
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
                    source_group=group,
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
                image = Image.objects.get(pk=outcome.image_id)
                shapes = shapes_by_image.get(im.key, [])
                if shapes and (image.width, image.height) != (im.width, im.height):
                    skipped.append(
                        _skip(
                            im.key,
                            f"the image is stored as {image.width}x{image.height} (EXIF orientation) "
                            f"but labelled as {im.width}x{im.height}; its labels were not imported",
                        )
                    )
                    continue
                rows = []
                for n, shape in enumerate(shapes, 1):
                    category = categories.get(shape.category.lower())
                    if category is None:
                        skipped.append(
                            _skip(f"{im.key} label {n}", "its category was not imported")
                        )
                        continue
                    try:
                        kind, geometry = normalize_geometry(
                            shape.to_geometry(), width=image.width, height=image.height
                        )
                    except GeometryError as exc:
                        skipped.append(_skip(f"{im.key} label {n}", str(exc)))
                        continue
                    rows.append(
                        Annotation(
                            image=image,
                            category=category,
                            kind=kind,
                            geometry=geometry,
                            source=Annotation.Source.IMPORT,
                            review_status=Annotation.ReviewStatus.APPROVED,
                            author=user,
                            updated_by=user,
                        )
                    )
                if rows:
                    Annotation.objects.bulk_create(rows)
                    counts["annotations"] += len(rows)
                    Image.objects.filter(
                        pk=image.pk, status__in=[Image.Status.NEW, Image.Status.INSPECTED]
                    ).update(status=Image.Status.LABELED)
        finally:
            # also when the import stops half-way: stored images still get their pyramids
            if stored_ids:
                from inspection.services.images import images_enqueue_derivatives

                images_enqueue_derivatives(user=user, project=project, image_ids=stored_ids)
    progress(1.0, "done")
    return {
        "format": fmt,
        "images": counts["images"],
        "negatives": counts["negatives"],
        "annotations": counts["annotations"],
        "duplicates": counts["duplicates"],
        "categories_created": created,
        "categories_matched": matched,
        "skipped_count": len(skipped),
        "adjusted_count": len(report.adjusted),
        "skipped": _items(skipped),
        "adjusted": _items(report.adjusted),
        "message": (
            f"{counts['images']} images ({counts['negatives']} negatives), "
            f"{counts['annotations']} labels; {counts['duplicates']} duplicates, "
            f"{len(skipped)} skipped, {len(report.adjusted)} adjusted"
        ),
    }


def _skip(item: str, reason: Any):
    from annotations.formats import Skipped

    if isinstance(reason, ValidationError):
        reason = " ".join(reason.messages)
    return Skipped(item, str(reason))


__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "FormatError",
    "dataset_export_enqueue",
    "dataset_export_job",
    "dataset_exports_prune",
    "dataset_export_run",
    "dataset_import_enqueue",
    "dataset_import_run",
    "dataset_version_freeze",
    "dataset_versions_compare",
    "version_dataset_from_content",
]
