"""Model output becomes pending suggestions here, and only here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from annotations.geometry import GeometryError, bounds, normalize_geometry
from annotations.models import Suggestion
from inspection.models import Image, InspectionRun, ModelVersion
from inspection.services.projects import with_inspection_defaults

if TYPE_CHECKING:  # the app never loads the ML packages at run time
    from workers.anomaly.regions import Region


def suggestions_store(
    *,
    image: Image,
    run: InspectionRun | None,
    model_version: ModelVersion,
    regions: Iterable[Region],
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
