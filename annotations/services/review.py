"""Human decisions: on suggestions (accept, edit and accept, reject), on annotators' labels
(approve, send back), and on whole images (verdict, normal).

Rules (each tested): only reviewers and project admins decide; nobody approves labels they drew
themselves; a suggestion is decided once (a second decision racing the first gets a conflict);
every decision on a suggestion or a label is a Review row with who, when, what and the shape
before and after. An annotator's "OK" on an image is a proposal; a reviewer's is a decision that
makes the image a confirmed normal one (and rejects its pending suggestions as false alarms).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotations.models import Annotation, Review, Suggestion
from annotations.services.categories import category_of
from annotations.services.image_state import (
    image_has_defects,
    image_update_status,
    image_write_normal,
    image_write_verdict,
)
from annotations.services.labels import annotation_from_suggestion, clean_geometry
from inspection.errors import ConflictError
from inspection.models import Image, Role
from inspection.permissions import has_role, require_role

REJECT_REASONS = {key for key, _ in Review.REJECT_REASONS}


# --- suggestions -----------------------------------------------------------------------------


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
        category = category_of(image.project, category_id)
        before = current.geometry
        if geometry is not None:
            kind, after = clean_geometry(image, geometry)
        else:
            kind, after = current.kind, current.geometry
        edited = after != before
        annotation = annotation_from_suggestion(
            user=user, suggestion=current, category=category, kind=kind, geometry=after
        )
        current.status = Suggestion.Status.ACCEPTED
        current.category = category
        current.decided_by = user
        current.decided_at = timezone.now()
        current.save(update_fields=["status", "category", "decided_by", "decided_at"])
        for decided in _with_echoes(
            current, status=current.status, category=category, decided_by=user
        ):
            Review.objects.create(
                image=image,
                suggestion=decided,
                annotation=annotation,
                action=Review.Action.EDIT_ACCEPT if edited else Review.Action.ACCEPT,
                category=category,
                geometry_before=decided.geometry,
                geometry_after=after,
                decided_by=user,
            )
        image_update_status(image=image)
    return annotation


def _with_echoes(current: Suggestion, **decision) -> list[Suggestion]:
    """``current`` (decided and saved) and the other kind's pending suggestions stored at its
    place (``same_as``), given the same ``decision`` fields: one queue item, one decision (the
    caller writes a Review row for each)."""
    echoes = list(
        Suggestion.objects.select_for_update().filter(
            same_as=current, status=Suggestion.Status.PENDING
        )
    )
    for echo in echoes:
        for name, value in {**decision, "decided_at": current.decided_at}.items():
            setattr(echo, name, value)
        echo.save(update_fields=[*decision, "decided_at"])
    return [current, *echoes]


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
        for decided in _with_echoes(
            current, status=current.status, reject_reason=reason, decided_by=user
        ):
            Review.objects.create(
                image=current.image,
                suggestion=decided,
                action=Review.Action.REJECT,
                reason=reason,
                comment=comment,
                geometry_before=decided.geometry,
                decided_by=user,
            )
        image_update_status(image=current.image)
    return current


# --- annotators' labels ----------------------------------------------------------------------


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
    if current.updated_by_id == user.id:
        # the label as it is now is the reviewer's own work (they redrew it or changed its
        # category): approving it would be reviewing themselves
        raise ValidationError(
            "You changed this label last, so you cannot review it: ask another reviewer."
        )
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


# --- whole images ----------------------------------------------------------------------------


def image_set_verdict(*, user, image: Image, verdict: str) -> Image:
    """Mark the whole image: 'ok' (no defect), 'needs_review', or '' to clear (any member; a
    reviewer's 'ok' also confirms the image as normal)."""
    require_role(user, image.project, Role.ANNOTATOR)
    if verdict not in Image.Verdict.values:
        raise ValidationError({"verdict": "Use 'ok', 'needs_review' or '' (clear)."})
    image_write_verdict(image=image, verdict=verdict, user=user)
    if verdict == Image.Verdict.OK:
        image_confirm_normal(user=user, image=image)
    image_update_status(image=image)
    return image


def image_confirm_normal(*, user, image: Image) -> bool:
    """An image a reviewer marks OK, with no accepted defect, becomes a confirmed normal image
    (used when the anomaly model is retrained). Returns whether it did."""
    if not has_role(user, image.project, Role.REVIEWER) or image_has_defects(image=image):
        return False
    # pending suggestions on an OK image are false alarms: record that decision too
    for suggestion in image.suggestions.filter(status=Suggestion.Status.PENDING):
        suggestion_reject(
            user=user, suggestion=suggestion, reason="false_alarm", comment="image marked OK"
        )
    image_write_normal(image=image, normal=True)
    return True


def image_set_normal(*, user, image: Image, normal: bool) -> Image:
    """Say whether an image is defect-free, i.e. used to train the anomaly model (reviewers and
    admins). Refused for an image with defect labels or accepted suggestions."""
    require_role(user, image.project, Role.REVIEWER)
    with transaction.atomic():
        # the image row is the lock: a defect accepted meanwhile waits, then clears the flag
        Image.objects.select_for_update().filter(pk=image.pk).first()
        image.refresh_from_db(fields=["is_normal"])
        if normal and image_has_defects(image=image):
            raise ValidationError(
                {
                    "is_normal": "This image has defect labels or accepted suggestions: delete "
                    "or send them back before marking it normal."
                }
            )
        return image_write_normal(image=image, normal=normal)
