"""Regions of interest: named polygons drawn on a reference image of the part, each inspected
with its own anomaly model and threshold or excluded (the seed's "gemstone facets: train
per-region models"). The one writer of ``InspectionRegion``.

Every region of a project is drawn on the same reference image. An inspection registers each
image onto it (the stored alignment when the image is paired with that reference, else the same
OpenCV registration made on the spot: workers/tasks/anomaly.py), so the polygon lands on the
same place of every part; the engine's side is workers/anomaly/roi.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from inspection.models import Image, InspectionRegion, ModelVersion, Project, Role
from inspection.permissions import require_role
from inspection.services.inspections import (
    ARCHITECTURES,
    MIN_NORMAL_IMAGES,
    _check_input_size,
    _checked_train_params,
    model_version_create,
    training_images,
)
from inspection.services.projects import is_number

MAX_REGIONS = 50
MAX_POINTS = 1000
THRESHOLD_RANGE = (0.05, 10.0)  # as the project's run threshold (services.projects)
_UNSET = object()


def regions_of(project: Project):
    """A project's regions, in the order they were drawn."""
    return InspectionRegion.objects.filter(project=project).select_related("model_version")


@dataclass(frozen=True)
class Registration:
    """How an image lies on the regions' reference, as far as stored: ``state`` is
    ``reference`` (the image is the reference: its own frame), ``aligned`` (``matrix``: the
    stored alignment, 3x3, reference pixels -> image pixels), ``pending`` (aligning now),
    ``failed`` (refused: ``reason``), ``other`` (paired with another reference) or ``unpaired``.
    Only the first two place the regions without registering the image anew."""

    state: str
    matrix: list[list[float]] | None = None
    reason: str = ""

    @property
    def placed(self) -> bool:
        return self.state in ("reference", "aligned")


def _matrix_of(alignment: dict) -> list[list[float]] | None:
    m = alignment.get("matrix")
    if not (isinstance(m, list) and len(m) == 3):
        return None
    if not all(
        isinstance(row, list)
        and len(row) == 3
        and all(is_number(v) and math.isfinite(v) for v in row)
        for row in m
    ):
        return None
    return [[float(v) for v in row] for row in m]


def registration_onto(image: Image, reference: Image) -> Registration:
    """Where ``image`` stands against ``reference`` without registering it: the rule inspection
    runs use before they register an image on the spot (workers/tasks/regions.py's Registrar),
    and what the workspace draws the regions with."""
    if image.pk == reference.pk:
        return Registration("reference")
    if image.reference_id != reference.pk:
        return Registration("other" if image.reference_id is not None else "unpaired")
    stored = image.alignment or {}
    status = stored.get("status")
    if status == "ok":
        matrix = _matrix_of(stored)
        if matrix is not None:
            return Registration("aligned", matrix)
        return Registration("failed", reason="the stored alignment has no usable matrix")
    if status == "failed":
        return Registration("failed", reason=str(stored.get("reason") or ""))
    return Registration("pending")


def _checked_polygon(polygon, reference: Image) -> list[list[float]]:
    if not isinstance(polygon, list) or not 3 <= len(polygon) <= MAX_POINTS:
        raise ValidationError(
            {"polygon": f"A list of 3 to {MAX_POINTS} [x, y] points in the reference's pixels."}
        )
    points = []
    for point in polygon:
        if not (
            isinstance(point, list | tuple)
            and len(point) == 2
            and all(is_number(v) and math.isfinite(v) for v in point)
        ):
            raise ValidationError({"polygon": f"{point!r} is not an [x, y] point."})
        x, y = float(point[0]), float(point[1])
        if not (0 <= x <= reference.width and 0 <= y <= reference.height):
            raise ValidationError(
                {
                    "polygon": f"[{x:g}, {y:g}] is outside {reference.original_name} "
                    f"({reference.width}x{reference.height} px)."
                }
            )
        points.append([round(x, 2), round(y, 2)])
    area = 0.5 * abs(
        sum(
            x0 * y1 - x1 * y0
            for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True)
        )
    )
    if area < 16:
        raise ValidationError({"polygon": "The polygon encloses no area (at least 16 px²)."})
    return points


def _checked_threshold(threshold) -> float | None:
    if threshold is None:
        return None
    lo, hi = THRESHOLD_RANGE
    if not is_number(threshold) or not lo <= threshold <= hi:
        raise ValidationError(
            {"threshold": f"A calibrated score in [{lo:g}, {hi:g}] (0.5 = the model's), or null."}
        )
    return float(threshold)


def _checked_name(project: Project, name, exclude_pk: int | None = None) -> str:
    name = (name or "").strip() if isinstance(name, str) else ""
    if not name or len(name) > 100:
        raise ValidationError({"name": "A name of 1 to 100 characters."})
    taken = InspectionRegion.objects.filter(project=project, name=name)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    if taken.exists():
        raise ValidationError({"name": f"This project already has a region named '{name}'."})
    return name


def _checked_mode(mode) -> str:
    if mode not in InspectionRegion.Mode.values:
        raise ValidationError({"mode": "inspect or exclude."})
    return mode


def region_create(
    *,
    user,
    project: Project,
    name: str,
    reference: Image,
    polygon: list,
    mode: str = InspectionRegion.Mode.INSPECT,
    threshold: float | None = None,
) -> InspectionRegion:
    """Draw a region on a reference image of the project (project admins)."""
    require_role(user, project, Role.ADMIN)
    if reference.project_id != project.pk:
        raise ValidationError({"reference": "Not an image of this project."})
    if reference.reference_id is not None:
        raise ValidationError(
            {
                "reference": f"{reference.original_name} is compared with a reference itself: "
                "draw regions on the golden sample."
            }
        )
    with transaction.atomic():
        # one admin's region at a time per project: the reference, name and count rules hold
        Project.objects.select_for_update().filter(pk=project.pk).first()
        return _region_create_locked(
            project=project,
            name=name,
            reference=reference,
            polygon=polygon,
            mode=mode,
            threshold=threshold,
        )


def _region_create_locked(
    *, project: Project, name, reference: Image, polygon, mode, threshold
) -> InspectionRegion:
    existing = InspectionRegion.objects.filter(project=project).exclude(reference=reference)
    other = existing.select_related("reference").first()
    if other is not None:
        raise ValidationError(
            {
                "reference": f"This project's regions are drawn on {other.reference.original_name}; "
                "draw on it too (or delete them to use another reference)."
            }
        )
    if InspectionRegion.objects.filter(project=project).count() >= MAX_REGIONS:
        raise ValidationError(f"A project has at most {MAX_REGIONS} regions.")
    return InspectionRegion.objects.create(
        project=project,
        reference=reference,
        name=_checked_name(project, name),
        polygon=_checked_polygon(polygon, reference),
        mode=_checked_mode(mode),
        threshold=_checked_threshold(threshold),
    )


def region_update(
    *,
    user,
    region: InspectionRegion,
    name=_UNSET,
    polygon=_UNSET,
    mode=_UNSET,
    threshold=_UNSET,
    model_version=_UNSET,
) -> InspectionRegion:
    """Rename, redraw, switch between inspect and exclude, set the threshold (None: the
    project's) or the model (None: the project's; else a ready version trained for this region)
    of a region (project admins)."""
    require_role(user, region.project, Role.ADMIN)
    fields = []
    if name is not _UNSET:
        region.name = _checked_name(region.project, name, exclude_pk=region.pk)
        fields.append("name")
    if polygon is not _UNSET:
        region.polygon = _checked_polygon(polygon, region.reference)
        fields.append("polygon")
        if region.model_version is not None and not _trained_on_outline(
            region.model_version, region
        ):
            # its model learnt the old outline's crop: a redrawn region needs its own again
            region.model_version = None
            fields.append("model_version")
    if mode is not _UNSET:
        region.mode = _checked_mode(mode)
        fields.append("mode")
    if threshold is not _UNSET:
        region.threshold = _checked_threshold(threshold)
        fields.append("threshold")
    if model_version is not _UNSET:
        if model_version is not None and (
            model_version.project_id != region.project_id
            or model_version.params.get("region") != region.pk
            or model_version.status != ModelVersion.Status.READY
        ):
            raise ValidationError(
                {"model_version": "Not a ready model trained for this region (train one here)."}
            )
        if model_version is not None and not _trained_on_outline(model_version, region):
            raise ValidationError(
                {
                    "model_version": f"{model_version.architecture} v{model_version.number} was "
                    "trained on another outline of this region: train one on this outline."
                }
            )
        region.model_version = model_version
        fields.append("model_version")
    if fields:
        try:
            with transaction.atomic():
                region.save(update_fields=fields)
        except IntegrityError:  # another admin took the name meanwhile
            raise ValidationError(
                {"name": f"This project already has a region named '{region.name}'."}
            ) from None
    return region


def _trained_on_outline(version: ModelVersion, region: InspectionRegion) -> bool:
    """Whether ``version`` learnt the crop of the region's outline as it is now."""
    trained = ((version.metrics or {}).get("region") or {}).get("polygon")
    return trained == region.polygon


def region_delete(*, user, region: InspectionRegion) -> None:
    """Delete a region (project admins); its suggestions and their labels stay, without it."""
    require_role(user, region.project, Role.ADMIN)
    region.delete()


def region_model_train(
    *, user, region: InspectionRegion, architecture: str = "padim", params: dict | None = None
) -> ModelVersion:
    """Train an anomaly model on this region of every normal image (registered onto the
    region's reference and cropped to the region's box; project admins). When it is ready it
    becomes the region's model."""
    require_role(user, region.project, Role.ADMIN)
    if region.mode != InspectionRegion.Mode.INSPECT:
        raise ValidationError("An excluded region is never inspected: it needs no model.")
    if architecture not in ARCHITECTURES:
        raise ValidationError({"architecture": f"Use one of {', '.join(ARCHITECTURES)}."})
    params = _checked_train_params(params)
    _check_input_size(architecture, params)
    if params.get("scale") is not None:
        raise ValidationError(
            {"params": "A region's model sees the region whole (no tiles): leave scale out."}
        )
    ids = list(training_images(region.project).order_by("id").values_list("id", flat=True))
    if len(ids) < MIN_NORMAL_IMAGES:
        raise ValidationError(
            f"Training needs at least {MIN_NORMAL_IMAGES} normal (defect-free) images; the "
            f"project has {len(ids)}."
        )
    return model_version_create(
        user=user,
        project=region.project,
        kind=ModelVersion.Kind.ANOMALY,
        architecture=architecture,
        params={"model": architecture, **params, "region": region.pk},
        image_ids=ids,
        activate=True,
    )


def region_model_ready(*, model_version: ModelVersion) -> InspectionRegion | None:
    """A region's model finished training: it becomes the region's model (no role check: the
    training was asked for by an admin). None when the region was deleted, excluded or redrawn
    meanwhile (the model learnt the old outline: it stays listed, and is refused there)."""
    with transaction.atomic():
        region = (
            InspectionRegion.objects.select_for_update()
            .filter(pk=model_version.params.get("region"), project=model_version.project_id)
            .first()
        )
        if (
            region is None
            or region.mode != InspectionRegion.Mode.INSPECT
            or not _trained_on_outline(model_version, region)
        ):
            return None
        region.model_version = model_version
        region.save(update_fields=["model_version"])
    return region
