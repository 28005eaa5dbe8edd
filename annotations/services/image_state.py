"""The one writer of an image's state: ``status``, ``is_normal`` and ``verdict``.

An upload or import sets the first ``is_normal`` when it creates the image; every later change
comes through here, whoever asks (a label, a review decision, a verdict). Who may ask is decided
by the callers (labels.py, review.py); the rules of what the state becomes live here.

status: new -> inspected -> labeled -> reviewed, derived from what exists on the image
(``image_update_status``). is_normal: defect-free, used to train anomaly models; a defect seen on
the image clears it (``image_defect_added``), a reviewer's OK with no defect sets it.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from annotations.models import Annotation, Suggestion
from inspection.models import Image, Role
from inspection.permissions import has_role


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


def image_detector_checked(*, image: Image) -> None:
    """A detector looked at the image (a detection run, or the active detector classifying an
    inspection's regions), whatever it found: "most uncertain first" then counts an anomaly
    region no detector box confirmed as a disagreement (annotations/filters.py)."""
    Image.objects.filter(pk=image.pk).update(detector_checked_at=timezone.now())


def image_defect_added(*, image: Image) -> None:
    """A defect was labelled or accepted on the image: it is not normal any more, and an earlier
    "OK" verdict no longer holds (it must not train the anomaly model or be a negative)."""
    changed = (
        Image.objects.filter(pk=image.pk)
        .filter(models.Q(is_normal=True) | models.Q(verdict=Image.Verdict.OK))
        .update(is_normal=False, verdict="", verdict_by=None, verdict_at=None)
    )
    if changed:
        image.refresh_from_db(fields=["is_normal", "verdict", "verdict_by", "verdict_at"])


def image_has_defects(*, image: Image) -> bool:
    """Labels (other than sent back or ground truth) or accepted suggestions on the image."""
    labels = image.annotations.exclude(source=Annotation.Source.GROUND_TRUTH).exclude(
        review_status=Annotation.ReviewStatus.RETURNED
    )
    return labels.exists() or image.suggestions.filter(status=Suggestion.Status.ACCEPTED).exists()


def image_write_verdict(*, image: Image, verdict: str, user) -> Image:
    """Store the image's verdict ('' clears it) and who gave it."""
    image.verdict = verdict
    image.verdict_by = user if verdict else None
    image.verdict_at = timezone.now() if verdict else None
    image.save(update_fields=["verdict", "verdict_by", "verdict_at"])
    return image


def image_write_normal(*, image: Image, normal: bool) -> Image:
    """Store whether the image is defect-free (callers checked it may be)."""
    if image.is_normal != normal:
        Image.objects.filter(pk=image.pk).update(is_normal=normal)
        image.is_normal = normal
    return image
