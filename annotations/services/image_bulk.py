"""One action on many images of a project, as the image grid's selection asks: mark normal or
not, set the split, inspect with the active anomaly model or detector, mark as references (golden
samples) or not, find each image's most similar reference, delete.

Each image goes through the service that owns the rule (review.image_set_normal, the core's
image_update / image_delete, inspection_run_start), so a bulk action allows exactly what the
single one does. The role is checked once before anything changes; images another rule refuses
(an image with defect labels cannot be normal) are listed with the reason while the others are
done, as a person selecting 40 images expects.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from annotations.services import review
from inspection.models import Image, InspectionRun, ModelVersion, Project, Role
from inspection.permissions import require_role
from inspection.services import images as image_services
from inspection.services import references
from inspection.services.inspections import inspection_run_start

MAX_IMAGES = 1000
ACTIONS = {
    # action: (the role it needs, what it says it did)
    "normal": (Role.REVIEWER, "marked normal"),
    "not_normal": (Role.REVIEWER, "marked not normal"),
    "split": (Role.REVIEWER, "moved to split"),
    "inspect": (Role.REVIEWER, "sent to the anomaly model"),
    "detect": (Role.REVIEWER, "sent to the detector"),
    "reference": (Role.REVIEWER, "marked as references"),
    "not_reference": (Role.REVIEWER, "no longer references"),
    "propose_reference": (Role.ANNOTATOR, "sent to find their most similar reference"),
    "delete": (Role.ADMIN, "deleted"),
}


def _ids(image_ids) -> list[int]:
    if not isinstance(image_ids, list | tuple) or not image_ids:
        raise ValidationError({"image_ids": "Select at least one image."})
    if len(image_ids) > MAX_IMAGES:
        raise ValidationError({"image_ids": f"At most {MAX_IMAGES} images at a time."})
    out = []
    for i in image_ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i < 2**63:
            raise ValidationError({"image_ids": f"'{str(i)[:30]}' is not an image id."})
        out.append(i)
    return list(dict.fromkeys(out))


def images_bulk_apply(
    *, user, project: Project, image_ids, action: str, split: str | None = None
) -> dict:
    """Apply ``action`` (one of :data:`ACTIONS`) to the project's images ``image_ids``.

    Returns ``{"action", "done": [ids], "refused": [{"image", "name", "reason"}], "run": id or
    None, "message"}``. Unknown ids or another project's images refuse the whole request.
    """
    if action not in ACTIONS:
        raise ValidationError(
            {"action": f"Unknown action '{str(action)[:40]}'; use one of {', '.join(ACTIONS)}."}
        )
    minimum, verb = ACTIONS[action]
    require_role(user, project, minimum)
    ids = _ids(image_ids)
    if action == "split" and split not in Image.Split.values:
        raise ValidationError({"split": f"Unknown split '{split}'; use train, val, test or ''."})
    images = Image.objects.filter(project=project, pk__in=ids).in_bulk()
    missing = [i for i in ids if i not in images]
    if missing:
        raise ValidationError({"image_ids": f"Not images of this project: {missing[:10]}."})

    done, refused, run, job = [], [], None, None
    if action == "propose_reference":
        job = references.references_propose(user=user, project=project, image_ids=ids)
        done = ids
    elif action in ("inspect", "detect"):
        kind = ModelVersion.Kind.ANOMALY if action == "inspect" else ModelVersion.Kind.DETECTOR
        run = inspection_run_start(
            user=user,
            project=project,
            scope=InspectionRun.Scope.SELECTED,
            image_ids=ids,
            kind=kind,
        )
        done = ids
    else:
        for i in ids:
            image = images[i]
            try:
                with transaction.atomic():
                    if action in ("normal", "not_normal"):
                        review.image_set_normal(user=user, image=image, normal=action == "normal")
                    elif action == "split":
                        image_services.image_update(user=user, image=image, split=split)
                    elif action in ("reference", "not_reference"):
                        references.image_mark_reference(
                            user=user, image=image, is_reference=action == "reference"
                        )
                    else:
                        image_services.image_delete(user=user, image=image)
            except (ValidationError, PermissionDenied) as exc:
                reason = " ".join(
                    m for ms in getattr(exc, "message_dict", {}).values() for m in ms
                ) or " ".join(getattr(exc, "messages", [str(exc)]))
                refused.append({"image": i, "name": image.original_name, "reason": reason})
            else:
                done.append(i)
    what = f"{len(done)} image{'s' if len(done) != 1 else ''} {verb}"
    if action == "split":
        what += f" '{split or 'none'}'"
    message = what + (f"; {len(refused)} refused: {refused[0]['reason']}" if refused else ".")
    return {
        "action": action,
        "done": done,
        "refused": refused,
        "run": run.pk if run is not None else None,
        "job": str(job.pk) if job is not None else None,
        "message": message,
    }
