"""Labels on images: every way a label comes in or changes goes through this module.

``annotation_create`` / ``annotations_bulk_create`` / ``annotation_update`` /
``annotation_delete`` serve people in the workspace and the API, ``annotation_from_suggestion``
the review of suggestions, ``labels_import`` the COCO, YOLO and MVTec imports. Every shape is
checked by ``annotations.geometry.normalize_geometry`` (clipped to the image, refused when
degenerate; ``clean_geometry`` turns a refusal into a ValidationError), and every change keeps
the image's state true through ``image_state``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

from annotations.geometry import GeometryError, normalize_geometry
from annotations.models import Annotation, DefectCategory
from annotations.services.categories import category_of
from annotations.services.image_state import image_defect_added, image_update_status
from inspection.errors import ConflictError
from inspection.models import Image, Role
from inspection.permissions import has_role, require_role


def clean_geometry(image: Image, geometry: Any) -> tuple[str, dict]:
    """(kind, clean geometry) of a shape on ``image``, or a ValidationError on ``geometry``."""
    try:
        return normalize_geometry(geometry, width=image.width, height=image.height)
    except GeometryError as exc:
        raise ValidationError({"geometry": str(exc)}) from None


def _after_label_change(image: Image, *, defect_added: bool = False) -> None:
    if defect_added:
        image_defect_added(image=image)
    image_update_status(image=image)


def annotation_create(
    *, user, image: Image, category_id, geometry, source: str = "manual", client_id: str = ""
) -> Annotation:
    """Add a label to an image (annotators and up). Geometry is checked against the image size.

    ``client_id`` makes the call idempotent: a browser that retries a create whose answer it
    never got (network cut after the server committed) gets the same label back, not a copy.
    """
    require_role(user, image.project, Role.ANNOTATOR)
    client_id = (client_id or "")[:64]
    if client_id:
        existing = Annotation.objects.filter(image=image, client_id=client_id).first()
        if existing is not None:
            return existing
    category = category_of(image.project, category_id)
    kind, clean = clean_geometry(image, geometry)
    if source not in Annotation.Source.values:
        raise ValidationError({"source": f"Unknown source '{source}'."})
    try:
        with transaction.atomic():
            annotation = Annotation.objects.create(
                image=image,
                category=category,
                kind=kind,
                geometry=clean,
                source=source,
                author=user,
                updated_by=user,
                client_id=client_id,
            )
    except IntegrityError:  # the same client_id raced in twice
        return Annotation.objects.get(image=image, client_id=client_id)
    _after_label_change(image, defect_added=source != Annotation.Source.GROUND_TRUTH)
    return annotation


def annotation_from_suggestion(
    *, user, suggestion, category: DefectCategory, kind: str, geometry: dict
) -> Annotation:
    """The approved label a reviewer makes by accepting a suggestion (``review.suggestion_accept``
    checks and records the decision; ``geometry`` is clean). A confirmed defect: the image is
    not normal any more."""
    annotation = Annotation.objects.create(
        image=suggestion.image,
        category=category,
        kind=kind,
        geometry=geometry,
        source=Annotation.Source.SUGGESTION,
        suggestion=suggestion,
        author=user,
        updated_by=user,
        review_status=Annotation.ReviewStatus.APPROVED,
    )
    image_defect_added(image=suggestion.image)
    return annotation


def annotations_bulk_create(*, user, image: Image, items: list[dict]) -> list[Annotation]:
    """Add many labels at once: all are stored, or none (the error names the item). At most
    ``LOUPE_MAX_LABELS_PER_REQUEST`` (5000) per call; checked item by item, then inserted in
    one statement (5000 boxes took 82 s one by one; docs/api.md)."""
    if not isinstance(items, list) or not items:
        raise ValidationError("Send a non-empty list of annotations.")
    cap = settings.LOUPE_MAX_LABELS_PER_REQUEST
    if len(items) > cap:
        raise ValidationError(
            f"{len(items)} annotations in one request; at most {cap} are allowed. "
            "Send them in several requests."
        )
    require_role(user, image.project, Role.ANNOTATOR)
    categories = {c.pk: c for c in DefectCategory.objects.filter(project=image.project)}
    rows = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ValidationError({"item": "must be an object {category, geometry}"})
            category_id = item.get("category")
            key = category_id
            if isinstance(key, str) and key.isdigit():
                key = int(key)
            category = (
                categories.get(key) if isinstance(key, int) and not isinstance(key, bool) else None
            )
            if category is None:
                raise ValidationError(
                    {"category": f"Unknown category {category_id!r} for this project."}
                )
            kind, clean = clean_geometry(image, item.get("geometry"))
        except ValidationError as exc:
            detail = exc.message_dict if hasattr(exc, "error_dict") else {"item": exc.messages}
            raise ValidationError(
                {f"item {index}": [f"{k}: {' '.join(v)}" for k, v in detail.items()]}
            ) from None
        rows.append(
            Annotation(
                image=image,
                category=category,
                kind=kind,
                geometry=clean,
                source=Annotation.Source.MANUAL,
                author=user,
                updated_by=user,
            )
        )
    with transaction.atomic():
        created = Annotation.objects.bulk_create(rows, batch_size=1000)
        _after_label_change(image, defect_added=True)
    return created


def _may_change(user, annotation: Annotation) -> None:
    """Annotators change their own labels; reviewers and admins anyone's; ground truth only
    admins (docs/permissions.md, "Labels")."""
    project = annotation.image.project
    if annotation.source == Annotation.Source.GROUND_TRUTH:
        require_role(user, project, Role.ADMIN)
    elif annotation.author_id != getattr(user, "id", None):
        if not has_role(user, project, Role.REVIEWER):
            raise PermissionDenied(
                "Only its author, a reviewer or an admin may change this label; "
                "comment on the image to ask for a change."
            )


def _locked(annotation: Annotation, version) -> Annotation:
    current = Annotation.objects.select_for_update().filter(pk=annotation.pk).first()
    if current is None:
        raise ConflictError("This annotation was deleted by someone else.", None)
    if version is None:
        raise ValidationError({"version": "Send the version you edited (for conflict checks)."})
    if int(version) != current.version:
        who = current.updated_by.username if current.updated_by else "someone"
        raise ConflictError(
            f"{who} changed this annotation first (version {current.version}, you edited {version}).",
            current,
        )
    return current


def annotation_update(
    *, user, annotation: Annotation, version, category_id=None, geometry=None
) -> Annotation:
    """Change a label's category or shape, if nobody changed it since ``version`` (else 409)."""
    require_role(user, annotation.image.project, Role.ANNOTATOR)
    _may_change(user, annotation)
    with transaction.atomic():
        current = _locked(annotation, version)
        if category_id is not None:
            current.category = category_of(current.image.project, category_id)
        if geometry is not None:
            current.kind, current.geometry = clean_geometry(current.image, geometry)
        current.version += 1
        current.updated_by = user
        if current.review_status == Annotation.ReviewStatus.RETURNED:
            current.review_status = Annotation.ReviewStatus.PENDING  # fixed: back to the queue
        elif current.review_status == Annotation.ReviewStatus.APPROVED and not has_role(
            user, current.image.project, Role.REVIEWER
        ):
            current.review_status = Annotation.ReviewStatus.PENDING  # changed after approval
        current.save()
    _after_label_change(current.image)
    return current


def annotation_delete(*, user, annotation: Annotation, version) -> None:
    """Delete a label, if nobody changed it since ``version`` (else 409)."""
    project = annotation.image.project
    require_role(user, project, Role.ANNOTATOR)
    _may_change(user, annotation)
    if annotation.review_status == Annotation.ReviewStatus.APPROVED and not (
        has_role(user, project, Role.ADMIN)
        or (
            has_role(user, project, Role.REVIEWER)
            and getattr(user, "id", None) not in (annotation.author_id, annotation.updated_by_id)
        )
    ):
        raise PermissionDenied(
            "This label was approved: only another reviewer or an admin may delete it. "
            "Edit it instead (it goes back to review), or comment on the image."
        )
    with transaction.atomic():
        _locked(annotation, version).delete()
    _after_label_change(annotation.image)


@dataclass(frozen=True)
class LabelIn:
    """One label an importer brings: its category and its shape as a geometry dict."""

    category: DefectCategory
    geometry: dict


# The label source an import writes -> the review status its labels get. Imported labels were
# reviewed where they came from. Ground truth (MVTec masks) is reference data that no queue
# shows (review and freezing select it by its source), so it keeps the default status.
IMPORT_SOURCES = {
    Annotation.Source.IMPORT: Annotation.ReviewStatus.APPROVED,
    Annotation.Source.GROUND_TRUTH: Annotation.ReviewStatus.PENDING,
}


def labels_import(
    *, user, image: Image, labels: Iterable[LabelIn], source: str
) -> tuple[int, list[tuple[int, str]]]:
    """Store an importer's labels on one image (the import job checked the role).

    Every shape goes through ``normalize_geometry``; a shape refused there is left out and reported
    as ``(index, reason)`` (index from 1), the others are stored in one insert. Returns the number
    stored and the refusals.
    """
    if source not in IMPORT_SOURCES:
        raise ValueError(f"labels_import writes sources {sorted(IMPORT_SOURCES)}, not {source!r}")
    rows, refused = [], []
    for index, label in enumerate(labels, 1):
        try:
            kind, geometry = normalize_geometry(
                label.geometry, width=image.width, height=image.height
            )
        except GeometryError as exc:
            refused.append((index, str(exc)))
            continue
        rows.append(
            Annotation(
                image=image,
                category=label.category,
                kind=kind,
                geometry=geometry,
                source=source,
                review_status=IMPORT_SOURCES[source],
                author=user,
                updated_by=user,
            )
        )
    if rows:
        Annotation.objects.bulk_create(rows)
        _after_label_change(image, defect_added=source != Annotation.Source.GROUND_TRUTH)
    return len(rows), refused
