"""Model output becomes pending suggestions here, and only here.

Two producers: the anomaly engine's regions (an outline, no category) and the detector's boxes
(a category and its confidence). Both reach ``suggestions_store`` as :class:`SuggestionIn`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from django.db import transaction

from annotations.geometry import GeometryError, bounds, normalize_geometry
from annotations.models import Suggestion
from annotations.services.categories import categories_by_name
from inspection.models import Image, InspectionRegion, InspectionRun, ModelVersion
from inspection.services.projects import with_inspection_defaults

SAME_PLACE_IOU = 0.5  # a new suggestion this close to a decided or older one is the same place
# An anomaly outline and a detector box of one defect rarely share a box (a heatmap blob is
# looser): the other kind's suggestion is at the same place when their overlap covers this much
# of the smaller of the two, the rule that classifies anomaly regions (0.3) made stricter.
SAME_PLACE_COVER = 0.5


@dataclass(frozen=True)
class SuggestionIn:
    """One candidate region from a model: ``box`` is ``[x, y, w, h]`` in image pixels,
    ``polygon`` an outline (may be empty), ``score`` the calibrated peak score or the detector's
    confidence, ``category`` a detector's category name ('' when none proposed one: an anomaly
    region the active detector did not classify)."""

    box: tuple[float, float, float, float]
    score: float
    polygon: list[list[float]] = field(default_factory=list)
    mean_score: float | None = None
    area: float = 0.0
    category: str = ""
    category_score: float | None = None  # the detector's confidence in ``category``
    # ``category_score`` minus the detector's best score for another category at that box
    category_margin: float | None = None
    roi: int | None = None  # the region of interest (InspectionRegion id) it was found in

    @classmethod
    def from_region(cls, region: Any) -> SuggestionIn:
        """From a ``workers.anomaly.regions.Region`` (read by its fields: the app never imports
        the ML packages)."""
        return cls(
            box=tuple(float(v) for v in region.box),
            score=float(region.peak_score),
            polygon=region.polygon,
            mean_score=float(region.mean_score),
            area=float(region.area),
            roi=getattr(region, "roi", None),
        )

    @classmethod
    def from_detection(cls, detection: Any) -> SuggestionIn:
        """From a ``workers.detection.Detection`` (corners ``x1, y1, x2, y2``)."""
        w, h = detection.x2 - detection.x1, detection.y2 - detection.y1
        return cls(
            box=(float(detection.x1), float(detection.y1), float(w), float(h)),
            score=float(detection.score),
            area=float(w * h),
            category=detection.category_name,
            category_score=float(detection.score),
            category_margin=_margin(detection),
        )

    def classified(self, detections: Iterable[Any], *, min_cover: float = 0.3) -> SuggestionIn:
        """This anomaly region with the category of the detection that covers most of it (the
        overlap over the smaller of the two, at least ``min_cover``), and its confidence: the
        seeds' pipeline, heatmap region -> detector's class. Unchanged when none covers it."""
        x, y, w, h = self.box
        best, best_cover = None, 0.0
        for d in detections:
            iw = min(x + w, d.x2) - max(x, d.x1)
            ih = min(y + h, d.y2) - max(y, d.y1)
            if iw <= 0 or ih <= 0:
                continue
            smaller = min(w * h, (d.x2 - d.x1) * (d.y2 - d.y1))
            cover = iw * ih / smaller if smaller > 0 else 0.0
            if cover < min_cover:
                continue
            if best is None or cover > best_cover or (cover == best_cover and d.score > best.score):
                best, best_cover = d, cover
        if best is None:
            return self
        return replace(
            self,
            category=best.category_name,
            category_score=float(best.score),
            category_margin=_margin(best),
        )


def _margin(detection: Any) -> float | None:
    """A detection's score minus its ``second_score`` (the best other category's at its box);
    None when the detector did not say."""
    second = getattr(detection, "second_score", None)
    return None if second is None else float(detection.score) - float(second)


@transaction.atomic  # the superseded ones go only with their successors stored
def suggestions_store(
    *,
    image: Image,
    run: InspectionRun | None,
    model_version: ModelVersion,
    suggestions: Iterable[SuggestionIn],
) -> list[Suggestion]:
    """Store a model's candidates for an image as pending suggestions.

    Re-running the same model version on the same image never duplicates: when that pair already
    has suggestions made with the same inspection settings, nothing new is stored. With other
    settings (a new threshold, the specular mask...), the suggestions nobody decided yet are
    replaced by the new ones. A region on the place of a decided suggestion (any version) is not
    suggested again, and it supersedes the undecided suggestions of the other versions of the
    same kind at its place made by other runs (the latest run wins, also when an older version
    runs again: a region's newer model over its older one, the project's model over a region's
    former model and the other way round). One run may store several versions' suggestions on an
    image (an anomaly run's regions with models of their own: one call per version); they never
    supersede each other. A detector's category is the project's category of that name (any
    case), when it still exists.

    Where a pending suggestion of the other kind (anomaly / detector) covers the same place
    (SAME_PLACE_COVER), the new one is stored as its echo (``same_as``): the queue shows one item
    with both sources, and deciding it decides both. An anomaly suggestion without a category
    then takes the detector box's, as the classification of regions does.
    """
    suggestions = list(suggestions)
    existing = Suggestion.objects.filter(image=image, model_version=model_version)
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
        existing.filter(status=Suggestion.Status.PENDING).delete()
    on_image = Suggestion.objects.filter(image=image)
    decided = [
        bounds(g)
        for g in on_image.exclude(status=Suggestion.Status.PENDING).values_list(
            "geometry", flat=True
        )
    ]
    older = on_image.filter(  # the latest run wins, whichever version it ran
        status=Suggestion.Status.PENDING, model_version__kind=model_version.kind
    ).exclude(model_version=model_version)
    if run is not None:  # the versions of one run (its regions' own models) stand side by side
        older = older.exclude(run=run)
    others = list(older.values_list("id", "geometry"))
    cross = list(  # the other kind's pending suggestions here, each the main of its place
        on_image.filter(status=Suggestion.Status.PENDING, same_as__isnull=True)
        .exclude(model_version__kind=model_version.kind)
        .exclude(model_version__isnull=True)
        .select_related("category")
    )
    categories = categories_by_name(image.project)
    wanted = {item.roi for item in suggestions if item.roi is not None}
    regions = set(  # a region deleted while the run ran: its suggestions are stored without it
        InspectionRegion.objects.select_for_update()  # and none is deleted until they are stored
        .filter(pk__in=wanted, project=image.project_id)
        .values_list("pk", flat=True)
    )
    created, superseded = [], set()
    for item in suggestions:
        x, y, w, h = item.box
        place = (x, y, x + w, y + h)
        if any(_iou(place, box) >= SAME_PLACE_IOU for box in decided):
            continue  # accepted or rejected already
        geometry = _geometry(image, item)
        if geometry is None:
            continue
        superseded.update(pk for pk, g in others if _iou(place, bounds(g)) >= SAME_PLACE_IOU)
        category = categories.get(item.category.lower()) if item.category else None
        main = _same_place(place, cross)
        if main is not None and main.category_id is None and category is not None:
            # an unclassified anomaly region takes the detector's category at its place
            main.category = main.proposed_category = category
            main.category_score = item.category_score
            main.category_margin = item.category_margin
            main.save(
                update_fields=["category", "proposed_category", "category_score", "category_margin"]
            )
        created.append(
            Suggestion(
                image=image,
                run=run,
                model_version=model_version,
                kind=geometry["type"],
                geometry=geometry,
                score=item.score,
                mean_score=item.mean_score,
                area=item.area,
                category=category,
                proposed_category=category,
                category_score=item.category_score if category else None,
                category_margin=item.category_margin if category else None,
                same_as=main,
                region_id=item.roi if item.roi in regions else None,
            )
        )
    if superseded:
        Suggestion.objects.filter(pk__in=superseded, status=Suggestion.Status.PENDING).delete()
    return Suggestion.objects.bulk_create(created)


def _same_place(place: tuple, candidates: list[Suggestion]) -> Suggestion | None:
    """The candidate whose box covers most of the smaller of it and ``place`` (at least
    SAME_PLACE_COVER), or None."""
    best, best_cover = None, SAME_PLACE_COVER
    for candidate in candidates:
        other = bounds(candidate.geometry)
        w = min(place[2], other[2]) - max(place[0], other[0])
        h = min(place[3], other[3]) - max(place[1], other[1])
        if w <= 0 or h <= 0:
            continue
        smaller = min(
            (place[2] - place[0]) * (place[3] - place[1]),
            (other[2] - other[0]) * (other[3] - other[1]),
        )
        cover = w * h / smaller if smaller > 0 else 0.0
        if cover >= best_cover:
            best, best_cover = candidate, cover
    return best


def _geometry(image: Image, item: SuggestionIn) -> dict | None:
    """The outline when it is a valid polygon, else the box; None when neither fits the image."""
    x, y, w, h = item.box
    shapes = []
    if len(item.polygon) >= 3:
        shapes.append({"type": "polygon", "points": item.polygon})
    shapes.append({"type": "box", "x": x, "y": y, "w": w, "h": h})
    for shape in shapes:
        try:
            return normalize_geometry(shape, width=image.width, height=image.height)[1]
        except GeometryError:
            continue  # a degenerate outline: the box still says where to look
    return None


def _iou(a: tuple, b: tuple) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
