"""Regions of interest: per-region models and masks over a registered part (the seed's
"gemstone facets: train per-region models").

A region is a polygon drawn on a reference image of the part. Each image is registered onto that
reference (a 3x3 ``matrix`` mapping reference pixels to image pixels, as
``workers.change.align`` makes it), so the polygon lands on the same place of every part:

- an *excluded* region is masked: nothing there is ever suggested;
- an inspected region with its own model: the image is resampled into the reference's frame
  over the region's box (:func:`registered_crop`: the part seen exactly as in the reference, so
  a position-aware model like PaDiM sees every part at the same place), the region's model makes
  its calibrated map there, and the map is put back onto the image;
- a region's threshold: its map is scaled so that its threshold lands on the run's, so one
  stitched heatmap shows every region on the same colour scale and suggestions from different
  regions rank together in the review queue;
- outside every region: the image's own model (``outside=True``) or nothing.

Regions are extracted per region (:func:`apply_rois`), so a suggestion never straddles two and
carries the key of the region it was found in. Models for regions are trained on
:func:`registered_crop` of the normal images (the same crop as at inspection).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import cv2
import numpy as np

from .artifact import LoadedModel
from .config import PredictConfig
from .errors import AnomalyError
from .inference import Prediction, check_compatible, predict_decoded
from .regions import extract_regions

#: The crop a region's model sees: the polygon's box grown by this share of its size on each
#: side (context at the border, as the whole-image models get), within the reference.
BOX_MARGIN = 0.05


@dataclass
class RoiSpec:
    """One region of interest. ``polygon``: ``[[x, y], ...]`` in the reference's pixels;
    ``threshold``: the calibrated score a suggestion needs here (None: the run's);
    ``model``: its own model, trained on :func:`registered_crop` of normal images (None: the
    image's model); ``key``: what the suggestions found here carry (the app's region id)."""

    key: int
    name: str
    polygon: list[list[float]]
    exclude: bool = False
    model: LoadedModel | None = None
    threshold: float | None = None
    box: tuple[int, int, int, int] | None = None  # the crop ``model`` was trained on


def roi_box(
    polygon: list[list[float]], reference_size: tuple[int, int], margin: float = BOX_MARGIN
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the polygon's bounding box in the reference, grown by ``margin``
    of its size on each side and kept inside the reference ``(height, width)``."""
    points = np.asarray(polygon, np.float64)
    height, width = reference_size
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    box = (
        max(0, int(np.floor(x0 - mx))),
        max(0, int(np.floor(y0 - my))),
        min(width, int(np.ceil(x1 + mx))),
        min(height, int(np.ceil(y1 + my))),
    )
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        raise AnomalyError(f"the region {polygon!r} is too small to inspect")
    return box


def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1, 0, x], [0, 1, y], [0, 0, 1]], np.float64)


def registered_crop(
    image: np.ndarray, matrix: np.ndarray | None, box: tuple[int, int, int, int]
) -> np.ndarray:
    """The part of ``image`` that lies over ``box`` of the reference, resampled into the
    reference's frame (``matrix``: reference pixels -> image pixels; None: the image is the
    reference's frame). Pixels outside the image repeat its border."""
    x0, y0, x1, y1 = box
    homography = (np.eye(3) if matrix is None else np.asarray(matrix, np.float64)) @ _translation(
        x0, y0
    )
    crop = cv2.warpPerspective(
        image,
        homography,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,  # crop pixel -> image pixel
        borderMode=cv2.BORDER_REPLICATE,
    )
    if image.ndim == 3 and crop.ndim == 2:
        crop = crop[:, :, None]
    return crop


def _polygon_in_map(
    polygon: list[list[float]], matrix: np.ndarray, to_map: np.ndarray
) -> np.ndarray:
    """The polygon's vertices in heatmap pixels (a homography keeps straight edges straight)."""
    points = np.asarray(polygon, np.float64).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(points, to_map @ matrix).reshape(-1, 2)


def rois_at_points(
    points: np.ndarray | list,
    rois: list[RoiSpec],
    matrix: np.ndarray | list | None,
    *,
    outside: bool = True,
) -> list[tuple[bool, int | None]]:
    """Where each point (``[x, y]`` in image pixels, say a detector box's centre) lies among the
    regions, by the rule of :func:`apply_rois`'s maps: ``(kept, key)``, not kept inside an
    excluded region (an exclusion wins wherever it overlaps) or, without ``outside``, outside
    every region; ``key`` the region it lies in (a later region over an earlier one), None
    outside every region. For producers of boxes, not maps: detector runs. ``matrix``: reference
    pixels -> image pixels (None: the image is the reference)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if not len(pts):
        return []
    matrix = np.eye(3) if matrix is None else np.asarray(matrix, np.float64)
    continuous = _translation(0.5, 0.5) @ matrix @ _translation(-0.5, -0.5)
    # image -> reference, where the polygons are drawn (continuous coordinates on both sides)
    on_reference = cv2.perspectiveTransform(
        pts.reshape(-1, 1, 2), np.linalg.inv(continuous)
    ).reshape(-1, 2)
    polygons = [np.asarray(r.polygon, np.float32).reshape(-1, 1, 2) for r in rois]
    placed = []
    for x, y in on_reference:
        inside = [
            i
            for i, polygon in enumerate(polygons)
            if cv2.pointPolygonTest(polygon, (float(x), float(y)), False) >= 0
        ]
        if any(rois[i].exclude for i in inside):
            placed.append((False, rois[next(i for i in inside if rois[i].exclude)].key))
        elif inside:
            placed.append((True, rois[inside[-1]].key))
        else:
            placed.append((outside, None))
    return placed


def apply_rois(
    prediction: Prediction,
    image: np.ndarray,
    matrix: np.ndarray | list | None,
    rois: list[RoiSpec],
    reference_size: tuple[int, int],
    config: PredictConfig,
    *,
    outside: bool = True,
) -> Prediction:
    """``prediction`` (the image's model over the whole ``image``) with the regions applied:
    excluded regions masked, regions with their own model inspected by it, thresholds per
    region, the area outside every region kept (``outside``) or masked. An excluded region
    always wins where it overlaps an inspected one; among inspected regions a later one lies
    over an earlier one. Regions (suggestions) carry their region's ``key`` in ``roi`` (None
    outside every region). The image score becomes the highest pixel score where the image is
    inspected, relative to that place's threshold (0.5 = at it, as the model's own image score:
    a region's own model has no image-level calibration for the whole part). A region's model
    sees the crop it was trained on (``RoiSpec.box``; else the polygon's). ``matrix``: reference
    pixels -> image pixels (None: the image is the reference)."""
    started = time.perf_counter()
    if prediction.score_map is None:
        raise ValueError("apply_rois needs the prediction's float score map")
    matrix = np.eye(3) if matrix is None else np.asarray(matrix, np.float64)
    # the matrix maps pixel centres (integers); polygons and maps are continuous (a pixel covers
    # [i, i + 1)): the same mapping between continuous coordinates
    continuous = _translation(0.5, 0.5) @ matrix @ _translation(-0.5, -0.5)
    height, width = prediction.image_size
    map_h, map_w = prediction.score_map.shape
    to_map = np.diag([map_w / width, map_h / height, 1.0])
    run_threshold = config.regions.threshold
    stitched = prediction.score_map.astype(np.float32, copy=True)
    zones = np.zeros((map_h, map_w), np.int32)  # 0: outside every region, i + 1: rois[i]
    # inspected regions in order, then the excluded ones over them: a mask is never undone by
    # a region drawn after it
    order = [i for i, r in enumerate(rois) if not r.exclude] + [
        i for i, r in enumerate(rois) if r.exclude
    ]
    for index in order:
        corners = _polygon_in_map(rois[index].polygon, continuous, to_map)
        # sub-pixel vertices (shift 4 = 1/16 px): a thin region keeps its place on a small map
        cv2.fillPoly(zones, [np.round((corners - 0.5) * 16).astype(np.int32)], index + 1, shift=4)
    if not outside:
        stitched[zones == 0] = 0.0
    timings: dict[str, float] = {}
    for index, roi in enumerate(rois):
        inside = zones == index + 1
        if not inside.any():
            continue
        if roi.exclude:
            stitched[inside] = 0.0
            continue
        if roi.model is not None:
            t0 = time.perf_counter()
            box = roi.box or roi_box(roi.polygon, reference_size)
            crop = registered_crop(image, matrix, box)
            check_compatible(roi.model, crop, f"region {roi.name}", True)
            crop_config = dataclasses.replace(config, fit_size=False, allow_size_mismatch=True)
            own = predict_decoded(roi.model, roi.name, crop, crop_config, None, 0.0)
            crop_h, crop_w = crop.shape[:2]
            own_h, own_w = own.score_map.shape
            from_own = np.diag([crop_w / own_w, crop_h / own_h, 1.0])
            # own map cell -> crop -> reference -> image -> heatmap cell, in continuous
            # coordinates between the two cells' centres (+0.5 / -0.5)
            homography = (
                _translation(-0.5, -0.5)
                @ to_map
                @ continuous
                @ _translation(box[0], box[1])
                @ from_own
                @ _translation(0.5, 0.5)
            )
            warped = cv2.warpPerspective(
                own.score_map, homography, (map_w, map_h), flags=cv2.INTER_LINEAR, borderValue=0
            )
            stitched[inside] = warped[inside]
            timings[roi.name] = round(time.perf_counter() - t0, 4)
        if roi.threshold is not None and roi.threshold > 0:
            stitched[inside] *= run_threshold / roi.threshold
    found = []
    for zone in range(len(rois) + 1):
        if zone == 0 and not outside:
            continue
        if zone > 0 and rois[zone - 1].exclude:
            continue
        inside = zones == zone
        if not inside.any():
            continue
        zone_map = np.where(inside, stitched, 0.0).astype(np.float32)
        key = None if zone == 0 else rois[zone - 1].key
        for region in extract_regions(zone_map, (height, width), config.regions):
            found.append(dataclasses.replace(region, roi=key))
    found.sort(key=lambda r: r.peak_score, reverse=True)
    found = found[: config.regions.top_k]
    # every place's threshold sits at the run's in ``stitched``: on the 0.5 scale
    image_score = float(stitched.max()) * 0.5 / run_threshold if stitched.size else 0.0
    heatmap = np.round(np.clip(stitched, 0.0, 1.0) * 255).astype(np.uint8)
    params = {
        **prediction.params,
        "rois": {
            "regions": len(rois),
            "outside": outside,
            "matrix": [[float(v) for v in row] for row in matrix],
            "own_model_s": timings,
        },
    }
    return dataclasses.replace(
        prediction,
        image_score=image_score,
        is_anomalous=image_score >= 0.5,
        heatmap=heatmap,
        score_map=stitched,
        regions=found,
        params=params,
        timings={
            **prediction.timings,
            "rois_s": round(time.perf_counter() - started, 4),
        },
    )
