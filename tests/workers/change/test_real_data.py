"""Three DeepPCB pairs (official test split): alignment and the labelled boxes found.

Skipped when ../shared/datasets/deeppcb is missing. The whole dataset's figures are in
docs/benchmarks.md (benchmarks/change.py).
"""

from __future__ import annotations

import json

import pytest

from workers.change import ChangeCalibration, align, compare, read_rgb
from workers.change.compare import DEEPPCB_RAW_THRESHOLD

from .conftest import DATASETS

pytestmark = [pytest.mark.ml, pytest.mark.datasets]

ROOT = DATASETS / "deeppcb"
PAIRS = ["44000011", "44000012", "77000102"]


def found_by(region: list[float], box: list[float]) -> bool:
    """The benchmark's rule: IoU >= 0.1, or the region's box contains the box's centre."""
    rx, ry, rw, rh = region
    bx, by, bw, bh = box
    ix = max(0.0, min(rx + rw, bx + bw) - max(rx, bx))
    iy = max(0.0, min(ry + rh, by + bh) - max(ry, by))
    inter = ix * iy
    cx, cy = bx + bw / 2, by + bh / 2
    return inter / (rw * rh + bw * bh - inter) >= 0.1 or (
        rx <= cx <= rx + rw and ry <= cy <= ry + rh
    )


@pytest.fixture(scope="module")
def dataset() -> dict:
    if not (ROOT / "annotations.json").is_file():
        pytest.skip(f"dataset deeppcb not found at {ROOT} (set LOUPE_DATASETS)")
    coco = json.loads((ROOT / "annotations.json").read_text())
    out = {}
    for im in coco["images"]:
        key = im["file_name"].split("/")[-1].split("_")[0]
        if key in PAIRS:
            boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == im["id"]]
            out[key] = (ROOT / im["file_name"], ROOT / im["template_file_name"], boxes)
    assert sorted(out) == sorted(PAIRS)
    return out


@pytest.mark.parametrize("key", PAIRS)
def test_pair_aligns_and_its_labelled_boxes_are_found(dataset, encoder, key):
    image_path, reference_path, boxes = dataset[key]
    image, reference = read_rgb(image_path), read_rgb(reference_path)
    alignment = align(image, reference)
    # the scans are registered by the authors to within a few pixels; ECC refines that
    assert alignment.ok, alignment.reason
    assert alignment.method in ("ecc", "identity")
    assert alignment.residual_px < 1.0 and alignment.overlap > 0.98
    calibration = ChangeCalibration(lo=0.0, threshold=DEEPPCB_RAW_THRESHOLD, quantile=0.9995)
    result = compare(
        image, reference, encoder=encoder, calibration=calibration, alignment=alignment
    )
    regions = [r.box for r in result.regions]
    missed = [b for b in boxes if not any(found_by(r, b) for r in regions)]
    false = [r for r in regions if not any(found_by(r, b) for b in boxes)]
    assert missed == [], (missed, regions)
    assert len(false) <= 1, false
