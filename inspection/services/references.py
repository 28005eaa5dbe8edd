"""Reference images: pairing an image with its golden sample / template / 'before' picture, and
the one writer of the pair's alignment.

An image points at its reference (``Image.reference``, same project); the reference is marked
``is_reference``. A reference is a golden sample: it has no reference itself, and an image that
others are compared with cannot be given one (no chains, no cycles). Setting or changing a
reference queues the ``reference_align`` job (workers/tasks/references.py), which registers the
reference onto the image, builds the aligned reference's pyramid and the difference image, and
hands them to :func:`reference_alignment_store`.

Pairs are made on import (a COCO ``reference_file_name`` / DeepPCB ``template_file_name`` field, a
YOLO zip's ``references/`` folder), on upload by the project's file-name rule
(:func:`reference_name_candidates`), or by hand through the API and the workspace.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from django.core.exceptions import ValidationError
from django.db import transaction

from inspection import storage
from inspection.models import Image, Job, Project, Role
from inspection.permissions import require_role
from inspection.services.jobs import job_enqueue

JOB_KIND = "reference_align"


def parse_name_rule(rule: str) -> list[tuple[str, str]]:
    """``"_test=_temp\\n_after=_before"`` -> ``[("_test", "_temp"), ("_after", "_before")]``.

    Raises ``ValidationError`` (field ``reference_rule``) for a malformed line."""
    pairs = []
    for n, line in enumerate((rule or "").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        image_part, sep, ref_part = line.partition("=")
        image_part, ref_part = image_part.strip(), ref_part.strip()
        if not sep or not image_part or not ref_part or image_part == ref_part:
            raise ValidationError(
                {
                    "reference_rule": f"Line {n} ('{line}') is not 'image suffix=reference "
                    "suffix', e.g. '_test=_temp' (the two suffixes must differ)."
                }
            )
        pairs.append((image_part, ref_part))
    return pairs


def reference_name_candidates(name: str, rule: str) -> tuple[str, list[str]]:
    """What a file is under the rule: ``("image", [reference stems])`` when its stem ends with
    an image suffix, ``("reference", [])`` when it ends with a reference suffix, else
    ``("", [])``. Stems are compared without the extension (``a_test.jpg`` pairs with
    ``a_temp.png``)."""
    stem = PurePosixPath(name).stem
    kind, candidates = "", []
    for image_part, ref_part in parse_name_rule(rule):
        if stem.endswith(image_part):
            kind = "image"
            candidates.append(stem[: -len(image_part)] + ref_part)
        elif stem.endswith(ref_part) and not kind:
            kind = "reference"
    return kind, candidates


def _check_pair(image: Image, reference: Image) -> None:
    if reference.project_id != image.project_id:
        raise ValidationError({"reference": "The reference must be an image of the same project."})
    if reference.pk == image.pk:
        raise ValidationError({"reference": "An image cannot be its own reference."})
    if reference.reference_id is not None:
        raise ValidationError(
            {
                "reference": f"'{reference.original_name}' is itself compared with another "
                "image; a reference is a golden sample without a reference of its own."
            }
        )
    others = image.paired_images.exclude(pk=image.pk).count()
    if others:
        raise ValidationError(
            {
                "reference": f"'{image.original_name}' is the reference of {others} image(s); "
                "a reference cannot have a reference itself."
            }
        )


def _forget_derived(image: Image) -> None:
    # the aligned reference's pyramid and the difference share one folder per alignment
    # (<derived>/reference-<stamp>/), so a browser never sees a cached file of an older pair
    for name in (image.reference_pyramid_path, image.difference_path):
        if name:
            folder = str(PurePosixPath(name).parent)
            transaction.on_commit(lambda folder=folder: storage.delete_tree(folder))
            return


def references_unpair_from(*, reference: Image) -> int:
    """Before ``reference`` is deleted: the images compared with it lose the pair, its
    alignment and their aligned files (the foreign key alone would leave them pointing at a
    pyramid of a reference that is gone). Returns how many."""
    paired = list(Image.objects.filter(reference=reference))
    for image in paired:
        _forget_derived(image)
    Image.objects.filter(pk__in=[i.pk for i in paired]).update(
        reference=None, alignment={}, reference_pyramid_path="", difference_path=""
    )
    return len(paired)


def image_set_reference(*, user, image: Image, reference: Image | None) -> Image:
    """Compare ``image`` with ``reference`` from now on (``None``: with nothing); annotators and
    above. The reference becomes ``is_reference``; the alignment is redone by a background job."""
    require_role(user, image.project, Role.ANNOTATOR)
    with transaction.atomic():
        image = Image.objects.select_for_update().get(pk=image.pk)
        if reference is not None:
            reference = Image.objects.select_for_update().get(pk=reference.pk)
            _check_pair(image, reference)
        if reference is not None and image.reference_id == reference.pk:
            return image  # unchanged: keep the alignment
        _forget_derived(image)
        image.reference = reference
        image.alignment = {"status": "pending"} if reference is not None else {}
        image.reference_pyramid_path = ""
        image.difference_path = ""
        image.save(
            update_fields=["reference", "alignment", "reference_pyramid_path", "difference_path"]
        )
        if reference is not None:
            if not reference.is_reference:
                Image.objects.filter(pk=reference.pk).update(is_reference=True)
                reference.is_reference = True
            references_enqueue_alignment(user=user, project=image.project, image_ids=[image.pk])
    return image


def references_pair(
    *, user, project: Project, pairs: list[tuple[Image, Image]]
) -> tuple[int, list[tuple[str, str]]]:
    """Pair many images at once (imports, uploads): ``(image, reference)`` each; one alignment job
    for all. Returns the number paired and ``(image name, reason)`` for each pair refused."""
    require_role(user, project, Role.ANNOTATOR)
    paired, refused = [], []
    with transaction.atomic():
        for image, reference in pairs:
            try:
                _check_pair(image, reference)
            except ValidationError as exc:
                refused.append((image.original_name, " ".join(exc.messages)))
                continue
            if image.reference_id == reference.pk:
                continue
            _forget_derived(image)
            Image.objects.filter(pk=image.pk).update(
                reference=reference,
                alignment={"status": "pending"},
                reference_pyramid_path="",
                difference_path="",
            )
            Image.objects.filter(pk=reference.pk, is_reference=False).update(is_reference=True)
            image.reference_id = reference.pk
            paired.append(image.pk)
        if paired:
            references_enqueue_alignment(user=user, project=project, image_ids=paired)
    return len(paired), refused


def references_pair_by_name(
    *, user, project: Project, images: list[Image]
) -> tuple[int, list[tuple[str, str]]]:
    """Pair ``images`` (just stored) by the project's file-name rule, looking for the reference
    among these images first, then among the project's images. Returns what
    :func:`references_pair` returns."""
    rule = project.reference_rule
    if not rule.strip():
        return 0, []
    by_stem: dict[str, Image] = {}
    for other in images:
        by_stem.setdefault(PurePosixPath(other.original_name).stem, other)
    pairs = []
    for image in images:
        kind, stems = reference_name_candidates(image.original_name, rule)
        if kind != "image":
            continue
        found = next((by_stem[s] for s in stems if s in by_stem), None)
        if found is None:
            for stem in stems:
                found = (
                    project.images.filter(original_name__startswith=f"{stem}.")
                    .order_by("id")
                    .first()
                )
                if found is not None:
                    break
        if found is not None:
            pairs.append((image, found))
    if not pairs:
        return 0, []
    return references_pair(user=user, project=project, pairs=pairs)


def references_enqueue_alignment(*, user, project: Project, image_ids: list[int]) -> Job | None:
    """Queue the alignment of these images with their references (one job)."""
    if not image_ids:
        return None
    return job_enqueue(
        kind=JOB_KIND, user=user, project=project, payload={"image_ids": list(image_ids)}
    )


def reference_alignment_store(
    *,
    image_id: int,
    reference_id: int,
    alignment: dict,
    pyramid_path: str = "",
    difference_path: str = "",
) -> bool:
    """Record the alignment of ``image_id`` with ``reference_id`` (the job's result; status ok or
    failed with its reason and figures). Stored only while the image is still paired with that
    reference: a pair changed meanwhile was queued again. Returns whether it was stored."""
    status = alignment.get("status")
    if status not in ("ok", "failed"):
        raise ValueError(f"alignment status must be 'ok' or 'failed', not {status!r}")
    updated = Image.objects.filter(pk=image_id, reference_id=reference_id).update(
        alignment=alignment,
        reference_pyramid_path=pyramid_path if status == "ok" else "",
        difference_path=difference_path if status == "ok" else "",
    )
    return bool(updated)


PROPOSE_JOB_KIND = "reference_propose"
#: How many of the most similar references the proposal tries to align, best first.
PROPOSE_CANDIDATES = 3


def image_mark_reference(*, user, image: Image, is_reference: bool) -> Image:
    """Mark an image as a reference (a golden sample others may be compared with) or not
    (reviewers and above). Refused for an image compared with a reference itself, and unmarking
    for one that others are compared with."""
    require_role(user, image.project, Role.REVIEWER)
    if is_reference and image.reference_id is not None:
        raise ValidationError(
            f"'{image.original_name}' is compared with a reference itself; a reference is a "
            "golden sample without one."
        )
    if not is_reference:
        others = image.paired_images.count()
        if others:
            raise ValidationError(
                f"'{image.original_name}' is the reference of {others} image(s): unpair them first."
            )
    Image.objects.filter(pk=image.pk).update(is_reference=is_reference)
    image.is_reference = is_reference
    return image


def references_propose(*, user, project: Project, image_ids: list[int]) -> Job:
    """Queue the proposal of a reference for each of these images (annotators and above): the
    project's references most similar to it by a global descriptor are aligned in turn, and the
    first that aligns becomes its reference (``alignment.proposed`` says so). Images that have a
    reference, or are references, are left as they are."""
    require_role(user, project, Role.ANNOTATOR)
    if not project.images.filter(is_reference=True).exists():
        raise ValidationError(
            "This project has no reference images to propose from: mark a golden sample as a "
            "reference first."
        )
    return job_enqueue(
        kind=PROPOSE_JOB_KIND,
        user=user,
        project=project,
        payload={"image_ids": list(image_ids)},
    )


def reference_proposal_store(
    *,
    image_id: int,
    reference_id: int,
    alignment: dict,
    pyramid_path: str,
    difference_path: str,
) -> bool:
    """Pair an image with the reference a proposal found and aligned (the job's result); only
    while the image still has no reference (a person may have chosen one meanwhile)."""
    if alignment.get("status") != "ok":
        raise ValueError("a proposal is stored only with an alignment that succeeded")
    with transaction.atomic():
        updated = Image.objects.filter(
            pk=image_id, reference__isnull=True, is_reference=False
        ).update(
            reference_id=reference_id,
            alignment=alignment,
            reference_pyramid_path=pyramid_path,
            difference_path=difference_path,
        )
        if updated:
            Image.objects.filter(pk=reference_id, is_reference=False).update(is_reference=True)
    return bool(updated)
