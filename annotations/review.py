"""The review loop: suggestions from model output, and the human decisions on them and on labels.

Rules (each tested): only reviewers and project admins decide; nobody approves labels they drew
themselves; a suggestion is decided once (a second decision racing the first gets a conflict);
every decision is a Review row with who, when, what and the shape before and after.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotations.geometry import GeometryError, bounds, normalize_geometry
from annotations.models import Annotation, Review, Suggestion
from annotations.services import ConflictError, _category_of, _clean_geometry
from inspection.models import Image, InspectionRun, ModelVersion, Role
from inspection.permissions import has_role, require_role
from inspection.services.projects import with_inspection_defaults

REJECT_REASONS = {key for key, _ in Review.REJECT_REASONS}


# --- model output -> suggestions -----------------------------------------------------------


def suggestions_store(
    *, image: Image, run: InspectionRun | None, model_version: ModelVersion, regions: Iterable
) -> list[Suggestion]:
    """Store a model's regions for an image as pending suggestions.

    Re-running the same model version on the same image never duplicates: when that pair already
    has suggestions made with the same inspection settings, nothing new is stored. With other
    settings (a new threshold, the specular mask...), the suggestions nobody decided yet are
    replaced by the new ones; decided ones stay, and a region on the place of a decided one is
    not suggested again.
    """
    existing = Suggestion.objects.filter(image=image, model_version=model_version)
    decided: list[tuple] = []
    if existing.exists():
        # the settings of the latest run that stored suggestions here (none: the defaults)
        previous = (
            existing.filter(run__isnull=False)
            .order_by("-run_id")
            .values_list("run__params", flat=True)
        ).first()
        same = with_inspection_defaults(previous) == with_inspection_defaults(run and run.params)
        if run is None or same:
            return []
        kept = existing.exclude(status=Suggestion.Status.PENDING)
        decided = [bounds(g) for g in kept.values_list("geometry", flat=True)]
        existing.filter(status=Suggestion.Status.PENDING).delete()
    created = []
    for region in regions:
        x, y, w, h = region.box
        if any(_iou((x, y, x + w, y + h), box) >= 0.5 for box in decided):
            continue  # accepted or rejected already
        geometry = None
        if len(region.polygon) >= 3:
            try:
                _kind, geometry = normalize_geometry(
                    {"type": "polygon", "points": region.polygon},
                    width=image.width,
                    height=image.height,
                )
            except GeometryError:
                geometry = None  # a degenerate outline: the box still says where to look
        if geometry is None:
            try:
                _kind, geometry = normalize_geometry(
                    {"type": "box", "x": x, "y": y, "w": w, "h": h},
                    width=image.width,
                    height=image.height,
                )
            except GeometryError:
                continue
        created.append(
            Suggestion(
                image=image,
                run=run,
                model_version=model_version,
                kind=geometry["type"],
                geometry=geometry,
                score=float(region.peak_score),
                mean_score=float(region.mean_score),
                area=float(region.area),
            )
        )
    return Suggestion.objects.bulk_create(created)


def _iou(a: tuple, b: tuple) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --- decisions ---------------------------------------------------------------------------


def _lock_pending(suggestion: Suggestion) -> Suggestion:
    current = (
        Suggestion.objects.select_for_update()
        .select_related("image__project")
        .get(pk=suggestion.pk)
    )
    if current.status != Suggestion.Status.PENDING:
        who = current.decided_by.username if current.decided_by else "someone"
        raise ConflictError(f"This suggestion was already {current.status} by {who}.")
    return current


def suggestion_accept(
    *, user, suggestion: Suggestion, category_id, geometry: dict | None = None
) -> Annotation:
    """Accept a suggestion (optionally with an edited shape): it becomes an approved label."""
    require_role(user, suggestion.image.project, Role.REVIEWER)
    with transaction.atomic():
        current = _lock_pending(suggestion)
        image = current.image
        category = _category_of(image.project, category_id)
        before = current.geometry
        if geometry is not None:
            kind, after = _clean_geometry(image, geometry)
        else:
            kind, after = current.kind, current.geometry
        edited = after != before
        annotation = Annotation.objects.create(
            image=image,
            category=category,
            kind=kind,
            geometry=after,
            source=Annotation.Source.SUGGESTION,
            suggestion=current,
            author=user,
            updated_by=user,
            review_status=Annotation.ReviewStatus.APPROVED,
        )
        # a confirmed defect: the image is not a normal one (whatever was said of it before)
        Image.objects.filter(pk=image.pk).update(
            is_normal=False, verdict="", verdict_by=None, verdict_at=None
        )
        image.refresh_from_db(fields=["is_normal", "verdict", "verdict_by", "verdict_at"])
        current.status = Suggestion.Status.ACCEPTED
        current.category = category
        current.decided_by = user
        current.decided_at = timezone.now()
        current.save(update_fields=["status", "category", "decided_by", "decided_at"])
        Review.objects.create(
            image=image,
            suggestion=current,
            annotation=annotation,
            action=Review.Action.EDIT_ACCEPT if edited else Review.Action.ACCEPT,
            category=category,
            geometry_before=before,
            geometry_after=after,
            decided_by=user,
        )
        image_update_status(image=image)
    return annotation


def suggestion_reject(
    *, user, suggestion: Suggestion, reason: str = "", comment: str = ""
) -> Suggestion:
    """Reject a suggestion, with an optional reason from the short list."""
    require_role(user, suggestion.image.project, Role.REVIEWER)
    if reason and reason not in REJECT_REASONS:
        raise ValidationError(
            {"reason": f"Use one of {', '.join(sorted(REJECT_REASONS))}, or none."}
        )
    with transaction.atomic():
        current = _lock_pending(suggestion)
        current.status = Suggestion.Status.REJECTED
        current.reject_reason = reason
        current.decided_by = user
        current.decided_at = timezone.now()
        current.save(update_fields=["status", "reject_reason", "decided_by", "decided_at"])
        Review.objects.create(
            image=current.image,
            suggestion=current,
            action=Review.Action.REJECT,
            reason=reason,
            comment=comment,
            geometry_before=current.geometry,
            decided_by=user,
        )
        image_update_status(image=current.image)
    return current


def _lock_label(annotation: Annotation, user) -> Annotation:
    current = (
        Annotation.objects.select_for_update()
        .select_related("image__project")
        .get(pk=annotation.pk)
    )
    if current.source == Annotation.Source.GROUND_TRUTH:
        raise ValidationError("Ground-truth labels are not reviewed.")
    if current.author_id == user.id:
        raise ValidationError("You cannot review a label you drew yourself: ask another reviewer.")
    if current.review_status != Annotation.ReviewStatus.PENDING:
        raise ConflictError(
            f"This label was already {current.get_review_status_display().lower()}.", current
        )
    return current


def annotation_approve(*, user, annotation: Annotation, comment: str = "") -> Annotation:
    """Approve an annotator's label (reviewers and admins; never one's own)."""
    require_role(user, annotation.image.project, Role.REVIEWER)
    with transaction.atomic():
        current = _lock_label(annotation, user)
        current.review_status = Annotation.ReviewStatus.APPROVED
        current.save(update_fields=["review_status", "updated_at"])
        Review.objects.create(
            image=current.image,
            annotation=current,
            action=Review.Action.APPROVE,
            comment=comment,
            category=current.category,
            geometry_before=current.geometry,
            geometry_after=current.geometry,
            decided_by=user,
        )
        image_update_status(image=current.image)
    return current


def annotation_return(*, user, annotation: Annotation, comment: str) -> Annotation:
    """Send a label back to its author with a comment saying what to fix."""
    require_role(user, annotation.image.project, Role.REVIEWER)
    if not (comment or "").strip():
        raise ValidationError({"comment": "Say what should change when sending a label back."})
    with transaction.atomic():
        current = _lock_label(annotation, user)
        current.review_status = Annotation.ReviewStatus.RETURNED
        current.save(update_fields=["review_status", "updated_at"])
        Review.objects.create(
            image=current.image,
            annotation=current,
            action=Review.Action.RETURN,
            comment=comment.strip(),
            category=current.category,
            geometry_before=current.geometry,
            decided_by=user,
        )
        image_update_status(image=current.image)
    return current


# --- image status ------------------------------------------------------------------------


def image_update_status(*, image: Image) -> Image:
    """new -> inspected -> labeled -> reviewed, from what exists on the image.

    reviewed: no pending suggestion and no label waiting for review, and at least one decision
    (or an OK verdict). labeled: it has labels. inspected: a model looked at it.
    """
    labels = image.annotations.exclude(source=Annotation.Source.GROUND_TRUTH)
    pending_suggestions = image.suggestions.filter(status=Suggestion.Status.PENDING).exists()
    pending_labels = labels.filter(review_status=Annotation.ReviewStatus.PENDING).exists()
    ok_by_reviewer = image.verdict == Image.Verdict.OK and has_role(
        image.verdict_by, image.project, Role.REVIEWER
    )  # an annotator's OK is a proposal, not a decision
    decided = image.reviews.exists() or ok_by_reviewer
    if decided and not pending_suggestions and not pending_labels:
        status = Image.Status.REVIEWED
    elif labels.exists():
        status = Image.Status.LABELED
    elif image.heatmaps.exists() or image.suggestions.exists():
        status = Image.Status.INSPECTED
    else:
        status = Image.Status.NEW
    if image.status != status:
        Image.objects.filter(pk=image.pk).update(status=status)
        image.status = status
    return image


def image_confirm_normal(*, user, image: Image) -> bool:
    """An image a reviewer marks OK, with no accepted defect, becomes a confirmed normal image
    (used when the anomaly model is retrained). Returns whether it did."""
    if not has_role(user, image.project, Role.REVIEWER):
        return False
    defects = image.annotations.exclude(source=Annotation.Source.GROUND_TRUTH).exclude(
        review_status=Annotation.ReviewStatus.RETURNED
    )
    if defects.exists() or image.suggestions.filter(status=Suggestion.Status.ACCEPTED).exists():
        return False
    # pending suggestions on an OK image are false alarms: record that decision too
    for suggestion in image.suggestions.filter(status=Suggestion.Status.PENDING):
        suggestion_reject(
            user=user, suggestion=suggestion, reason="false_alarm", comment="image marked OK"
        )
    Image.objects.filter(pk=image.pk).update(is_normal=True)
    image.is_normal = True
    return True
