"""Dataset versions: freeze the project's confirmed labels into an immutable version, compare two.

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
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max

from annotations.formats import Category, Dataset, DatasetImage, Shape
from annotations.formats.splits import DEFAULT_RATIOS, SplitItem, assign_splits
from annotations.formats.versions import content_hash, diff_datasets
from annotations.models import Annotation, DatasetVersion, DefectCategory
from inspection.models import Image, Project, Role
from inspection.permissions import require_role


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
    except (TypeError, ValueError, OverflowError):
        raise ValidationError({"ratios": "Split weights must be numbers."}) from None
    if not all(math.isfinite(v) for v in clean.values()):
        raise ValidationError({"ratios": "Split weights must be finite numbers."})
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


def _reference_entry(image: Image) -> dict[str, Any]:
    """The pair as frozen: the reference's file and how it was aligned (the matrix maps the
    reference's pixels onto the image's), so a version trains the same pairs later."""
    ref = image.reference
    if ref is None:
        return {}
    alignment = image.alignment or {}
    return {
        "reference": {
            "id": ref.id,
            "file": ref.file.name,
            "file_name": ref.original_name,
            "sha256": ref.sha256,
            "width": ref.width,
            "height": ref.height,
            "alignment": {
                k: alignment[k]
                for k in ("status", "method", "matrix", "residual_px", "inliers")
                if k in alignment
            },
        }
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
    for image in Image.objects.filter(project=project).select_related("reference").order_by("id"):
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
                    **_reference_entry(image),
                }
                for image, negative in images
            ],
            # every category of the project, in the order they were made, labelled or not: class
            # ids in exports (YOLO `names`, COCO ids) and detectors stay the same from one version
            # to the next (a YOLO export once dropped unused ones and its ids shifted)
            "categories": list(
                DefectCategory.objects.filter(project=project)
                .order_by("id")
                .values_list("name", flat=True)
            ),
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
            reference_name=(im.get("reference") or {}).get("file_name", ""),
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
