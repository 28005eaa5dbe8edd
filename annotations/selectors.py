"""Reads that several places of the labeling side share."""

from __future__ import annotations

from annotations.filters import ImageFilter
from inspection.models import Image


def image_neighbors(*, image: Image, params) -> dict:
    """Ids of the images before and after ``image`` in its project's filtered grid order."""
    qs = ImageFilter(params, queryset=Image.objects.filter(project_id=image.project_id)).qs
    prev_id = qs.filter(id__lt=image.id).order_by("-id").values_list("id", flat=True).first()
    next_id = qs.filter(id__gt=image.id).order_by("id").values_list("id", flat=True).first()
    return {"previous": prev_id, "next": next_id, "count": qs.count()}
