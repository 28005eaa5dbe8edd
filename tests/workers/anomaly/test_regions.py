"""Heatmap -> regions: threshold, morphology, merging, minimum area, top-K, JSON."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from workers.anomaly.regions import RegionConfig, extract_regions

pytestmark = pytest.mark.ml


def blob(heat: np.ndarray, cy: int, cx: int, r: int, value: float) -> None:
    cv2.circle(heat, (cx, cy), r, value, -1)


def test_two_blobs_give_two_regions_in_image_coordinates():
    heat = np.zeros((100, 200), np.float32)  # heatmap at half the image size
    blob(heat, 20, 30, 6, 0.9)
    blob(heat, 70, 150, 10, 0.7)
    regions = extract_regions(heat, (200, 400), RegionConfig(min_area=10, merge_distance=0))
    assert len(regions) == 2
    first, second = regions
    assert first.peak_score == pytest.approx(0.9)  # sorted by peak
    x, y, w, h = first.box
    assert x == pytest.approx(48, abs=2) and y == pytest.approx(28, abs=2)
    assert w == pytest.approx(26, abs=3) and h == pytest.approx(26, abs=3)
    bx, by, bw, bh = second.box
    for px, py in second.polygon:
        assert bx - 1 <= px <= bx + bw + 1 and by - 1 <= py <= by + bh + 1
    assert second.area == pytest.approx(np.pi * 20**2, rel=0.15)
    json.dumps([r.to_dict() for r in regions])


def test_close_fragments_merge_and_far_ones_do_not():
    heat = np.zeros((100, 100), np.float32)
    blob(heat, 50, 40, 4, 0.8)
    blob(heat, 50, 52, 4, 0.8)  # 4 px gap
    blob(heat, 50, 90, 4, 0.8)  # far away
    merged = extract_regions(heat, (100, 100), RegionConfig(min_area=5, merge_distance=8))
    assert len(merged) == 2
    split = extract_regions(heat, (100, 100), RegionConfig(min_area=5, merge_distance=0))
    assert len(split) == 3
    big = max(merged, key=lambda r: r.box[2])
    assert big.box[2] > 20  # spans both fragments


def test_min_area_threshold_and_top_k():
    heat = np.zeros((100, 100), np.float32)
    heat[10, 10] = 1.0  # a single hot pixel: removed by opening / min area
    for i in range(5):
        blob(heat, 80, 10 + 20 * i, 5, 0.6 + 0.05 * i)
    regions = extract_regions(
        heat, (100, 100), RegionConfig(min_area=20, top_k=3, merge_distance=0)
    )
    assert len(regions) == 3
    assert [r.peak_score for r in regions] == sorted((r.peak_score for r in regions), reverse=True)
    assert regions[0].peak_score == pytest.approx(0.8)
    assert extract_regions(heat * 0.4, (100, 100)) == []  # nothing reaches 0.5


def test_many_regions_match_a_whole_map_reference():
    """Regions are cut out of their own boxes for speed; every figure must be what the whole
    map gives (boxes, areas, scores and polygons), here with many blobs, some at the edges."""
    rng = np.random.default_rng(5)
    heat = np.zeros((300, 400), np.float32)
    for _ in range(60):
        cy, cx = int(rng.integers(0, 300)), int(rng.integers(0, 400))
        blob(heat, cy, cx, int(rng.integers(2, 9)), float(rng.uniform(0.6, 2.0)))
    heat += rng.uniform(0, 0.05, heat.shape).astype(np.float32)
    config = RegionConfig(min_area=20, merge_distance=12, top_k=1000)
    got = extract_regions(heat, (900, 1200), config)
    assert len(got) > 20

    # reference: every label compared over the whole map
    from workers.anomaly.regions import _kernel, _polygon

    sy, sx = 900 / 300, 1200 / 400
    mask = (heat >= 0.5).astype(np.uint8)
    kernel = _kernel(config.morphology / 3.0)
    if kernel is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    count, labels = cv2.connectedComponents(cv2.dilate(mask, _kernel(12 / 3.0)), connectivity=8)
    want = []
    for label in range(1, count):
        member = (labels == label) & (mask > 0)
        if member.sum() * sy * sx < config.min_area or not member.any():
            continue
        ys, xs = np.nonzero(member)
        box = [
            xs.min() * sx,
            ys.min() * sy,
            (xs.max() + 1 - xs.min()) * sx,
            (ys.max() + 1 - ys.min()) * sy,
        ]
        want.append((box, member.sum() * sy * sx, heat[member].max(), heat[member].mean(),
                     _polygon(member, sx, sy, config.polygon_tolerance / 3.0)))  # fmt: skip
    want.sort(key=lambda w: w[2], reverse=True)
    assert len(got) == len(want)
    for region, (box, area, peak, mean, polygon) in zip(got, want, strict=True):
        assert region.box == pytest.approx(box)
        assert region.area == pytest.approx(area)
        assert region.peak_score == pytest.approx(peak) and region.mean_score == pytest.approx(mean)
        assert np.allclose(region.polygon, polygon)
