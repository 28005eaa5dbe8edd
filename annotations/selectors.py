"""Reads that several places of the labeling side share."""

from __future__ import annotations

from annotations.filters import ImageFilter
from inspection.models import Image


def image_neighbors(*, image: Image, params) -> dict:
    """Ids of the images before and after ``image`` in its project's filtered grid order."""
    qs = ImageFilter(params, queryset=Image.objects.filter(project_id=image.project_id)).qs
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
