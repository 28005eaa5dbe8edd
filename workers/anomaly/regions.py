"""From a calibrated heatmap to candidate defect regions.

Steps: threshold -> morphological opening (drops speckle) and closing (fills pin holes) ->
fragments closer than ``merge_distance`` are merged (dilated together for labelling only, so the
region's own pixels stay exact) -> connected components -> minimum area -> peak/mean score, box,
polygon -> the ``top_k`` highest-peak regions.

Coordinates are in the ORIGINAL image's pixels even though the heatmap is smaller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np


@dataclass
class Region:
    """One candidate defect region in original-image pixel coordinates.

    ``box`` is ``[x, y, width, height]`` (COCO order); ``polygon`` is a list of ``[x, y]``
    points, closed implicitly; ``area`` is in original pixels; scores are calibrated heatmap
    values (0.5 = the model's pixel threshold, 1.0 = as far above it as the threshold is above a
    typical normal pixel; not capped, so strong anomalies keep their order).
    """

    box: list[float]
    polygon: list[list[float]]
    area: float
    peak_score: float
    mean_score: float
    roi: int | None = None  # the region of interest it lies in (workers/anomaly/roi.py)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (plain floats and lists)."""
        return asdict(self)


@dataclass
class RegionConfig:
    """Parameters of heatmap -> regions. Lengths and areas are in original-image pixels."""

    threshold: float = 0.5
    min_area: float = 64.0
    merge_distance: float = 16.0
    morphology: float = 3.0
    top_k: int = 20
    polygon_tolerance: float = 1.5
    extra: dict = field(default_factory=dict)


def _kernel(pixels: float) -> np.ndarray | None:
    # odd sizes keep the structuring element centred (an even one shifts regions by a pixel)
    size = 2 * int(pixels // 2) + 1
    if size < 3:
        return None
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def extract_regions(
    heatmap: np.ndarray,
    image_size: tuple[int, int],
    config: RegionConfig | None = None,
) -> list[Region]:
    """Find candidate regions in ``heatmap`` (float, calibrated) of an image ``(height, width)``.

    The heatmap may be smaller than the image; it is assumed to cover the image exactly.
    """
    config = config or RegionConfig()
    height, width = image_size
    hm_h, hm_w = heatmap.shape
    sy, sx = height / hm_h, width / hm_w
    scale = (sy + sx) / 2.0
    mask = (heatmap >= config.threshold).astype(np.uint8)
    if not mask.any():
        return []
    kernel = _kernel(config.morphology / scale)
    if kernel is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    merge_kernel = _kernel(config.merge_distance / scale)
    grouping = cv2.dilate(mask, merge_kernel) if merge_kernel is not None else mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(grouping, connectivity=8)
    inside = mask > 0
    # one pass for every label's pixel count; then each region is cut out of its own box (a
    # per-label comparison over the whole map is slow on large maps: docs/anomaly.md)
    pixel_counts = np.bincount(labels[inside], minlength=count)
    regions: list[Region] = []
    for label in range(1, count):
        pixels = int(pixel_counts[label])
        area = pixels * sy * sx
        if pixels == 0 or area < config.min_area:
            continue
        left, top, w, h = (int(v) for v in stats[label, :4])
        window = (slice(top, top + h), slice(left, left + w))
        member = (labels[window] == label) & inside[window]
        values = heatmap[window][member]
        ys, xs = np.nonzero(member)
        x0, y0 = (left + xs.min()) * sx, (top + ys.min()) * sy
        x1, y1 = (left + xs.max() + 1) * sx, (top + ys.max() + 1) * sy
        regions.append(
            Region(
                box=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                polygon=_polygon(member, sx, sy, config.polygon_tolerance / scale, (left, top)),
                area=float(area),
                peak_score=float(values.max()),
                mean_score=float(values.mean()),
            )
        )
    regions.sort(key=lambda r: r.peak_score, reverse=True)
    return regions[: config.top_k]


def _polygon(
    member: np.ndarray, sx: float, sy: float, tolerance: float, offset: tuple[int, int] = (0, 0)
) -> list[list[float]]:
    """Outer contour of a (possibly fragmented) region as one polygon in image pixels.

    ``member`` may be cut out of the heatmap; ``offset`` is its top-left corner there.
    Merged fragments have several outer contours; their convex hull keeps one polygon per region
    as the annotation model expects.
    """
    contours, _ = cv2.findContours(
        member.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=offset
    )
    if len(contours) == 1:
        contour = contours[0]
    else:
        contour = cv2.convexHull(np.concatenate(contours))
    contour = cv2.approxPolyDP(contour, max(0.5, tolerance), True)
    points = contour.reshape(-1, 2).astype(np.float64)
    if len(points) < 3:  # degenerate: a line or a dot -> its box
        x, y, w, h = cv2.boundingRect(contour)
        points = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
    # pixel centres -> original coordinates (+0.5 puts vertices on pixel centres)
    return [[float((px + 0.5) * sx), float((py + 0.5) * sy)] for px, py in points]
