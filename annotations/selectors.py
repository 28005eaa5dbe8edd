"""Reads that several places of the labeling side share."""

from __future__ import annotations

from django.db.models import Count

from annotations.filters import ImageFilter
from annotations.models import Suggestion
from inspection.models import Image


def image_neighbors(*, image: Image, params, request=None) -> dict:
    """Ids of the images before and after ``image`` in its project's filtered grid order, as
    ``request``'s user sees the grid (its "with labels sent back to me" is that user's)."""
    qs = ImageFilter(
        params, queryset=Image.objects.filter(project_id=image.project_id), request=request
    ).qs
    if params.get("order") == "uncertainty":
        # a ranked order: the image's place in the ranked ids. An image that left the filter
        # (just labelled, under "unlabeled") goes on with the most uncertain one still in it.
        ids = list(qs.values_list("id", flat=True))
        if image.id not in ids:
            return {"previous": None, "next": ids[0] if ids else None, "count": len(ids)}
        at = ids.index(image.id)
        return {
            "previous": ids[at - 1] if at > 0 else None,
            "next": ids[at + 1] if at + 1 < len(ids) else None,
            "count": len(ids),
        }
    prev_id = qs.filter(id__lt=image.id).order_by("-id").values_list("id", flat=True).first()
    next_id = qs.filter(id__gt=image.id).order_by("id").values_list("id", flat=True).first()
    return {"previous": prev_id, "next": next_id, "count": qs.count()}


def review_filter_choices(*, project) -> dict:
    """What the review queue's filter menus offer: the model versions and runs that have pending
    suggestions in ``project``, newest first, and the regions of interest they were found in,
    each with its count of pending suggestions."""
    pending = Suggestion.objects.filter(image__project=project, status=Suggestion.Status.PENDING)
    versions = (
        pending.values(
            "model_version_id",
            "model_version__kind",
            "model_version__number",
            "model_version__architecture",
        )
        .annotate(n=Count("id"))
        .order_by("-model_version__kind", "-model_version__number")
    )
    runs = (  # a run is named by its own version (its regions' own models store theirs)
        pending.exclude(run=None)
        .values(
            "run_id", "run__created_at", "run__model_version__kind", "run__model_version__number"
        )
        .annotate(n=Count("id"))
        .order_by("-run__created_at", "-run_id")[:30]
    )
    regions = (
        pending.exclude(region=None)
        .values("region_id", "region__name")
        .annotate(n=Count("id"))
        .order_by("region__name")
    )
    return {
        "regions": [
            {"id": r["region_id"], "label": r["region__name"], "pending": r["n"]} for r in regions
        ],
        "versions": [
            {
                "id": v["model_version_id"],
                "label": f"{v['model_version__kind']} v{v['model_version__number']} "
                f"({v['model_version__architecture']})",
                "pending": v["n"],
            }
            for v in versions
            if v["model_version_id"]
        ],
        "runs": [
            {
                "id": r["run_id"],
                "label": f"run {r['run_id']} · {r['run__model_version__kind']} "
                f"v{r['run__model_version__number']} · {r['run__created_at']:%Y-%m-%d %H:%M}",
                "pending": r["n"],
            }
            for r in runs
        ],
    }
