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
