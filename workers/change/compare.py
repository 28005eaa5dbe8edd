"""Image + reference -> alignment, change heatmap and candidate regions, in one call.

The CLI and the benchmark use it; a job may call the steps one by one instead (align, keep the
alignment, warp, heatmap, calibrate, regions), which is all this does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from workers.anomaly.regions import Region, RegionConfig, extract_regions

from .align import Alignment, AlignmentError, align, warp_reference
from .heatmap import ChangeCalibration, ChangeEncoder, change_heatmap

#: The raw threshold ``fit_calibration`` finds on DeepPCB's trainval pairs (labelled defects
#: masked out; levels 1+2, no grey-level term, default quantile): the CLI's default when no
#: calibration is given. docs/benchmarks.md, "Change detection against a reference (DeepPCB)".
DEEPPCB_RAW_THRESHOLD = 168.0


@dataclass
class ChangeResult:
    """What :func:`compare` found. ``heatmap`` is calibrated (0.5 = threshold) and smaller than
    the image (it covers it exactly); both maps are None when the alignment was refused."""

    alignment: Alignment
    image_size: tuple[int, int]
    raw: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    regions: list[Region] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready summary (no maps)."""
        return {
            "alignment": self.alignment.to_dict(),
            "image_size": list(self.image_size),
            "regions": [r.to_dict() for r in self.regions],
        }


def compare(
    image: np.ndarray,
    reference: np.ndarray,
    *,
    encoder: ChangeEncoder,
    calibration: ChangeCalibration,
    region_config: RegionConfig | None = None,
    alignment: Alignment | None = None,
    max_side: int = 1600,
    tile: int = 1024,
    pixel_weight: float | None = None,
) -> ChangeResult:
    """Align (unless ``alignment`` is given), then heatmap and regions when the alignment is ok."""
    size = image.shape[:2]
    alignment = alignment or align(image, reference, max_side=max_side)
    if not alignment.ok:
        return ChangeResult(alignment=alignment, image_size=size)
    warped, valid = warp_reference(reference, alignment, size)
    extra = {} if pixel_weight is None else {"pixel_weight": pixel_weight}
    raw = change_heatmap(encoder, image, warped, valid, tile=tile, **extra)
    heatmap = calibration.apply(raw)
    regions = extract_regions(heatmap, size, region_config or RegionConfig())
    return ChangeResult(alignment, size, raw, heatmap, regions)


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 HxW (grey) or HxWx3 (RGB); 16-bit files are scaled to 8 bits."""
    data = np.fromfile(str(path), np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise AlignmentError(f"cannot read an image from {path}")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise AlignmentError(f"{path}: unsupported pixel type {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    elif array.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
        array = cv2.cvtColor(array, code)
    return array
