"""Defect categories (and, as the workspace grows, annotations)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import ProtectedError

from annotations.models import DefectCategory
from inspection.models import Project, Role
from inspection.permissions import has_role, require_role

PALETTE = [
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
    "#fabebe",
    "#008080",
    "#e6beff",
    "#9a6324",
    "#800000",
    "#aaffc3",
    "#808000",
]


def _validate(category: DefectCategory) -> None:
    try:
        category.full_clean(exclude=["project"])
    except ValidationError as exc:
        raise ValidationError(exc.message_dict) from None
    clash = DefectCategory.objects.filter(project=category.project).exclude(pk=category.pk)
    if clash.filter(name__iexact=category.name).exists():
        raise ValidationError(
            {"name": f"The project already has a category named '{category.name}'."}
        )
    if category.shortcut and clash.filter(shortcut=category.shortcut).exists():
        raise ValidationError(
            {"shortcut": f"Key '{category.shortcut}' is taken by another category."}
        )


def next_free_shortcut(project: Project) -> str:
    taken = set(DefectCategory.objects.filter(project=project).values_list("shortcut", flat=True))
    return next((k for k in "123456789" if k not in taken), "")


def category_create(
    *, user, project: Project, name: str, color: str = "", shortcut: str | None = None
) -> DefectCategory:
    """Add a defect category (project admins). Colour and key default to the next free ones."""
    if user is not None:
        require_role(user, project, Role.ADMIN)
    count = DefectCategory.objects.filter(project=project).count()
    category = DefectCategory(
        project=project,
        name=(name or "").strip(),
        color=color or PALETTE[count % len(PALETTE)],
        shortcut=next_free_shortcut(project) if shortcut is None else shortcut.strip().lower(),
    )
    _validate(category)
    category.save()
    return category


def category_update(
    *,
    user,
    category: DefectCategory,
    name: str | None = None,
    color: str | None = None,
    shortcut: str | None = None,
) -> DefectCategory:
    """Rename, recolour or re-key a category (project admins)."""
    require_role(user, category.project, Role.ADMIN)
    if name is not None:
        category.name = name.strip()
    if color is not None:
        category.color = color
    if shortcut is not None:
        category.shortcut = shortcut.strip().lower()
    _validate(category)
    category.save()
    return category


def category_delete(*, user, category: DefectCategory) -> None:
    """Delete a category that no annotation uses (project admins)."""
    require_role(user, category.project, Role.ADMIN)
    try:
        category.delete()
    except ProtectedError:
        n = category.annotations.count()
        raise ValidationError(
            f"'{category.name}' is used by {n} annotation(s); relabel or delete them first."
        ) from None


def category_get_or_create(*, project: Project, name: str) -> DefectCategory:
    """The category called ``name`` (any case), created when missing. For importers."""
    found = DefectCategory.objects.filter(project=project, name__iexact=name).first()
    return found or category_create(user=None, project=project, name=name)


# --- annotations ---------------------------------------------------------------------------


class ConflictError(Exception):
    """Someone else changed the annotation first. ``current`` is what is stored now (or None)."""

    def __init__(self, message: str, current=None) -> None:
        super().__init__(message)
        self.current = current


def _category_of(project: Project, category_id) -> DefectCategory:
    category = (
        DefectCategory.objects.filter(project=project, pk=category_id).first()
        if category_id
        else None
    )
    if category is None:
        raise ValidationError({"category": f"Unknown category {category_id!r} for this project."})
    return category


def _clean_geometry(image, geometry) -> tuple[str, dict]:
    from annotations.geometry import GeometryError, normalize_geometry

    try:
        return normalize_geometry(geometry, width=image.width, height=image.height)
    except GeometryError as exc:
        raise ValidationError({"geometry": str(exc)}) from None


def _after_label_change(image, *, defect_added: bool = False) -> None:
    """Keep the image's status (and normal flag) true to its labels after any label write."""
    from annotations.review import image_update_status
    from inspection.models import Image

    if defect_added:
        # a defect on an image counted as defect-free: it is not normal any more, and an earlier
        # "OK" verdict no longer holds (it must not train the anomaly model or be a negative)
        Image.objects.filter(pk=image.pk).filter(
            models.Q(is_normal=True) | models.Q(verdict=Image.Verdict.OK)
        ).update(is_normal=False, verdict="", verdict_by=None, verdict_at=None)
        image.refresh_from_db(fields=["is_normal", "verdict", "verdict_by", "verdict_at"])
    image_update_status(image=image)


def annotation_create(
    *, user, image, category_id, geometry, source: str = "manual", client_id: str = ""
):
    """Add a label to an image (annotators and up). Geometry is checked against the image size.

    ``client_id`` makes the call idempotent: a browser that retries a create whose answer it
    never got (network cut after the server committed) gets the same label back, not a copy.
    """
    from django.db import IntegrityError, transaction

    from annotations.models import Annotation

    require_role(user, image.project, Role.ANNOTATOR)
    client_id = (client_id or "")[:64]
    if client_id:
        existing = Annotation.objects.filter(image=image, client_id=client_id).first()
        if existing is not None:
            return existing
    category = _category_of(image.project, category_id)
    kind, clean = _clean_geometry(image, geometry)
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


def annotations_bulk_create(*, user, image, items: list[dict]):
    """Add many labels at once: all are stored, or none (the error names the item)."""
    from django.db import transaction

    if not isinstance(items, list) or not items:
        raise ValidationError("Send a non-empty list of annotations.")
    with transaction.atomic():
        created = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValidationError({f"item {index}": ["must be an object {category, geometry}"]})
            try:
                created.append(
                    annotation_create(
                        user=user,
                        image=image,
                        category_id=item.get("category"),
                        geometry=item.get("geometry"),
                    )
                )
            except ValidationError as exc:
                detail = exc.message_dict if hasattr(exc, "error_dict") else {"item": exc.messages}
                raise ValidationError(
                    {f"item {index}": [f"{k}: {' '.join(v)}" for k, v in detail.items()]}
                ) from None
        return created


def _may_change(user, annotation) -> None:
    from annotations.models import Annotation

    project = annotation.image.project
    if annotation.source == Annotation.Source.GROUND_TRUTH:
        require_role(user, project, Role.ADMIN)
    elif annotation.author_id != getattr(user, "id", None):
        require_role(user, project, Role.ANNOTATOR)


def _locked(annotation, version):
    from annotations.models import Annotation

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


def annotation_update(*, user, annotation, version, category_id=None, geometry=None):
    """Change a label's category or shape, if nobody changed it since ``version`` (else 409)."""
    from django.db import transaction

    from annotations.models import Annotation

    require_role(user, annotation.image.project, Role.ANNOTATOR)
    _may_change(user, annotation)
    with transaction.atomic():
        current = _locked(annotation, version)
        if category_id is not None:
            current.category = _category_of(current.image.project, category_id)
        if geometry is not None:
            current.kind, current.geometry = _clean_geometry(current.image, geometry)
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


def annotation_delete(*, user, annotation, version) -> None:
    """Delete a label, if nobody changed it since ``version`` (else 409)."""
    from django.db import transaction

    require_role(user, annotation.image.project, Role.ANNOTATOR)
    _may_change(user, annotation)
    if annotation.author_id != getattr(user, "id", None):
        require_role(user, annotation.image.project, Role.REVIEWER)
    with transaction.atomic():
        _locked(annotation, version).delete()
    _after_label_change(annotation.image)


def image_set_verdict(*, user, image, verdict: str):
    """Mark the whole image: 'ok' (no defect), 'needs_review', or '' to clear."""
    from django.utils import timezone

    from inspection.models import Image

    require_role(user, image.project, Role.ANNOTATOR)
    if verdict not in Image.Verdict.values:
        raise ValidationError({"verdict": "Use 'ok', 'needs_review' or '' (clear)."})
    image.verdict = verdict
    image.verdict_by = user if verdict else None
    image.verdict_at = timezone.now() if verdict else None
    image.save(update_fields=["verdict", "verdict_by", "verdict_at"])
    from annotations.review import image_confirm_normal, image_update_status

    if verdict == Image.Verdict.OK:
        image_confirm_normal(user=user, image=image)
    image_update_status(image=image)
    return image


def image_comment_add(*, user, image, text: str):
    """Add a comment to an image (any member)."""
    from annotations.models import ImageComment

    require_role(user, image.project, Role.ANNOTATOR)
    if not isinstance(text, str):
        raise ValidationError({"text": "A comment is text."})
    text = text.strip()
    if not text:
        raise ValidationError({"text": "A comment needs some text."})
    if len(text) > 5000:
        raise ValidationError({"text": "Comments are limited to 5000 characters."})
    return ImageComment.objects.create(image=image, author=user, text=text)
