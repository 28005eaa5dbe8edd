"""What a threshold does on the project's reviewed images (issue #15), read from what is stored.

For an anomaly model version, its heatmaps of reviewed images (the latest per image of that
version's inspection runs) are thresholded on a grid of scores: each connected area (8-connected)
at or above a score that is at least the project's ``min_area`` (image pixels) is a region, as
the worker makes suggestions. Per score: regions on good images per good image (false
suggestions), regions on defect images that touch no label, and how many labels some region
touches (recall), also per label category (which kinds of defect a higher threshold loses).

Reviewed images follow the leaderboard job's rule (``workers/tasks/anomaly_compare.py``
``reviewed_defects``): "defect" images have approved labels or imported ground truth (and are
not marked normal); "good" images are marked normal and have none, and were not among the
version's training images (it scores those low: they would hide false suggestions). Only the
``limit`` most
recently reviewed of them are read (``capped`` says when more were left out).

The stored PNG is the model's calibrated map: value/255 is the calibrated score clipped to
[0, 1] (128: the model's threshold, 0.5), also for runs whose project threshold differed. So the
grid stops at 1: a higher project threshold cannot be read from the maps. The worker also closes
and merges nearby areas before counting; this counts connected areas as they are, so a defect
cut in pieces counts as several regions here.

Read-only: nothing is written.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
from django.core.files.storage import default_storage
from django.db.models import Max, Q
from django.db.models.functions import Coalesce

from annotations.models import Annotation
from inspection.models import Image, ImageHeatmap, ModelVersion
from inspection.services.projects import inspection_settings

LIMIT = 300
GRID = tuple(round(0.30 + 0.05 * i, 2) for i in range(14))  # 0.30 .. 0.95


def _level(t: float) -> int:
    """The 8-bit heatmap value a calibrated score t maps to (as the worker rounds it)."""
    return int(min(255, max(0, math.floor(t * 255 + 0.5))))


def _reviewed_images(version: ModelVersion, limit: int) -> tuple[list, dict, bool]:
    """(the ``limit`` most recently reviewed images with a heatmap of ``version``, newest first,
    as ``(image_id, is_defect)``; their approved labels by image as ``(category name,
    geometry)``; whether more were left)."""
    project_id = version.project_id
    with_heatmap = ImageHeatmap.objects.filter(run__model_version=version).values("image_id")
    labelled = (
        Annotation.objects.filter(image__project_id=project_id)
        .exclude(review_status=Annotation.ReviewStatus.RETURNED)
        .filter(
            Q(review_status=Annotation.ReviewStatus.APPROVED)
            | Q(source=Annotation.Source.GROUND_TRUTH)
        )
    )
    defects = (
        Image.objects.filter(project_id=project_id, is_normal=False, pk__in=with_heatmap)
        .filter(pk__in=labelled.values("image_id"))
        .annotate(reviewed=Max("annotations__updated_at"))
        .order_by("-reviewed", "-id")
        .values_list("id", "reviewed")[: limit + 1]
    )
    goods = (
        Image.objects.filter(project_id=project_id, is_normal=True, pk__in=with_heatmap)
        .exclude(pk__in=labelled.values("image_id"))
        .exclude(pk__in=version.image_ids or [])  # it learnt those: they would flatter it
        .annotate(reviewed=Coalesce("verdict_at", "created_at"))
        .order_by("-reviewed", "-id")
        .values_list("id", "reviewed")[: limit + 1]
    )
    rows = [(r, i, True) for i, r in defects] + [(r, i, False) for i, r in goods]
    rows.sort(key=lambda row: (row[0], row[1]), reverse=True)
    capped = len(rows) > limit
    chosen = [(i, d) for _, i, d in rows[:limit]]
    geometries: dict[int, list[tuple[str, dict]]] = {}
    defect_ids = [i for i, d in chosen if d]
    for image_id, category, geometry in labelled.filter(image_id__in=defect_ids).values_list(
        "image_id", "category__name", "geometry"
    ):
        geometries.setdefault(image_id, []).append((category, geometry))
    return chosen, geometries, capped


def _decode(path: str) -> np.ndarray | None:
    try:
        with default_storage.open(path, "rb") as fh:
            raw = np.frombuffer(fh.read(), np.uint8)
    except OSError:
        return None
    heatmap = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE) if raw.size else None
    return heatmap if heatmap is not None and heatmap.size else None


def label_masks(geometries: list[dict], sx: float, sy: float, shape) -> list[np.ndarray]:
    """One boolean mask per label (box or polygon in image pixels), scaled to the heatmap by
    (sx, sy) heatmap pixels per image pixel; a label smaller than a heatmap pixel keeps one."""
    h, w = shape
    out = []
    for g in geometries:
        mask = np.zeros((h, w), np.uint8)
        if g.get("type") == "box":
            x0, y0 = int(g["x"] * sx), int(g["y"] * sy)
            x1 = max(x0, math.ceil((g["x"] + g["w"]) * sx) - 1)
            y1 = max(y0, math.ceil((g["y"] + g["h"]) * sy) - 1)
            cv2.rectangle(mask, (x0, y0), (x1, y1), 1, thickness=-1)
            cx, cy = (g["x"] + g["w"] / 2) * sx, (g["y"] + g["h"] / 2) * sy
        elif g.get("type") == "polygon" and len(g.get("points") or []) >= 3:
            pts = np.asarray(g["points"], np.float64) * (sx, sy)
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
            cx, cy = pts.mean(axis=0)
        else:
            continue
        if not mask.any():
            mask[min(h - 1, max(0, int(cy))), min(w - 1, max(0, int(cx)))] = 1
        out.append(mask.astype(bool))
    return out


def _count(
    heatmap, level: int, min_pixels: float, masks: list[np.ndarray]
) -> tuple[int, list[bool]]:
    """(regions touching no label, whether each label is touched) at ``level``: regions are
    8-connected areas of at least ``min_pixels`` heatmap pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (heatmap >= level).astype(np.uint8), connectivity=8
    )
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False  # the background
    if not keep.any():
        return 0, [False] * len(masks)
    touched = np.zeros(count, bool)
    found = []
    for mask in masks:
        hit = np.unique(labels[mask])
        hit = hit[keep[hit]]
        found.append(bool(hit.size))
        touched[hit] = True
    return int((keep & ~touched).sum()), found


def threshold_effect(version: ModelVersion, *, limit: int = LIMIT) -> dict:
    """The curve for ``version`` on the project's reviewed images (see the module docstring):
    ``curve`` rows of ``threshold``, ``false_per_good_image`` (None without good images),
    ``false_on_defect_images``, ``found`` and ``recall`` (None without labels) and
    ``found_by_category`` (of ``labels_by_category``), for the grid and the project's threshold
    where it is at most 1."""
    started = time.perf_counter()
    settings = inspection_settings(version.project)
    project_threshold = float(settings["threshold"])
    grid = sorted(set(GRID) | ({round(project_threshold, 4)} if project_threshold <= 1 else set()))
    chosen, geometries, capped = _reviewed_images(version, limit)
    heatmaps: dict[int, ImageHeatmap] = {}
    for h in (  # the latest per image: the first of each (no DISTINCT ON: SQLite has none)
        ImageHeatmap.objects.filter(run__model_version=version, image_id__in=[i for i, _ in chosen])
        .select_related("image")
        .order_by("image_id", "-created_at", "-id")
        .only("image_id", "path", "image__width", "image__height")
    ):
        heatmaps.setdefault(h.image_id, h)
    levels = [_level(t) for t in grid]
    false_good = [0] * len(grid)
    false_defect = [0] * len(grid)
    found = [0] * len(grid)
    by_category: dict[str, int] = {}  # labels per category
    found_by_category: list[dict[str, int]] = [{} for _ in grid]
    goods = defects = labels = unreadable = 0
    for image_id, is_defect in chosen:
        row = heatmaps.get(image_id)
        heatmap = _decode(row.path) if row is not None else None
        if heatmap is None:
            unreadable += 1
            continue
        h, w = heatmap.shape
        image = row.image
        sx, sy = w / max(1, image.width), h / max(1, image.height)
        # min_area is in image pixels: one heatmap pixel covers 1 / (sx * sy) of them
        min_pixels = max(1.0, float(settings["min_area"]) * sx * sy)
        masks, categories = [], []
        for category, geometry in geometries.get(image_id, []):
            for mask in label_masks([geometry], sx, sy, heatmap.shape):  # none if not an area
                masks.append(mask)
                categories.append(category)
        if is_defect:
            defects += 1
            labels += len(masks)
            for category in categories:
                by_category[category] = by_category.get(category, 0) + 1
        else:
            goods += 1
        for k, level in enumerate(levels):
            false, hits = _count(heatmap, level, min_pixels, masks)
            if is_defect:
                false_defect[k] += false
                found[k] += sum(hits)
                for category, hit in zip(categories, hits, strict=True):
                    found_by_category[k][category] = found_by_category[k].get(category, 0) + hit
            else:
                false_good[k] += false
    curve = [
        {
            "threshold": t,
            "false_per_good_image": round(false_good[k] / goods, 4) if goods else None,
            "false_on_defect_images": false_defect[k],
            "found": found[k],
            "recall": round(found[k] / labels, 4) if labels else None,
            "found_by_category": {c: found_by_category[k].get(c, 0) for c in sorted(by_category)},
        }
        for k, t in enumerate(grid)
    ]
    return {
        "model_version": version.pk,
        "threshold": project_threshold,
        "min_area": settings["min_area"],
        "images_used": goods + defects,
        "good_images": goods,
        "defect_images": defects,
        "labels": labels,
        "labels_by_category": dict(sorted(by_category.items())),
        "unreadable": unreadable,
        "capped": capped,
        "limit": limit,
        "curve": curve,
        "seconds": round(time.perf_counter() - started, 3),
    }
