"""MVTec-AD layout: folders by split and category, masks rasterised from boxes and polygons."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from annotations.formats import Dataset, Shape
from annotations.formats.mvtec import folder_name, rasterize_mask, write_mvtec


def test_layout_and_masks(sample: Dataset, tmp_path):
    counts = write_mvtec(sample, tmp_path / "mv")
    # img-1 (scratch + dent) and img-3 (scratch only) are defective train/val images: test set.
    assert counts == {
        "test/combined": 1,
        "test/dent": 2,
        "test/scratch": 1,
        "train/good": 1,
        "test/good": 1,
    }
    out = tmp_path / "mv"
    assert (out / "train/good/good1.png").is_file()
    assert (out / "test/good/good2.png").is_file()
    assert (out / "test/combined/a.png").is_file()
    mask = Image.open(out / "ground_truth/combined/a_mask.png")
    assert mask.mode == "L" and mask.size == (120, 80)
    arr = np.asarray(mask)
    assert set(np.unique(arr)) == {0, 255}
    # The scratch box (10, 12, 30, 20) covers exactly columns 10..39 and rows 12..31.
    assert arr[12:32, 10:40].all() and not arr[11, 10:40].any() and not arr[12:32, 40].any()
    for defect in ("combined", "dent", "scratch"):
        images = {p.stem for p in (out / "test" / defect).iterdir()}
        masks = {p.stem.removesuffix("_mask") for p in (out / "ground_truth" / defect).iterdir()}
        assert images == masks


def test_polygon_mask_matches_its_area():
    pts = [[10, 10], [50, 12], [40, 60], [12, 45]]
    arr = np.asarray(rasterize_mask([Shape.from_polygon("k", "c", pts)], 64, 64)) > 0
    # Pixel-centre rasterisation: within a pixel-wide band of the outline.
    assert arr.sum() == pytest.approx(1445, rel=0.08)
    assert arr[30, 30] and not arr[5, 5]


def test_tiny_shapes_still_mark_a_pixel():
    arr = np.asarray(rasterize_mask([Shape.from_box("k", "c", (5.2, 5.2, 0.3, 0.3))], 10, 10))
    assert (arr > 0).sum() == 1
    sliver = Shape.from_polygon("k", "c", [[2.1, 2.1], [2.3, 2.1], [2.2, 2.3]])
    assert (np.asarray(rasterize_mask([sliver], 10, 10)) > 0).sum() == 1


def test_category_folder_names_are_safe():
    assert folder_name("pin-hole") == "pin-hole"
    assert folder_name("big crack/edge") == "big_crack_edge"
    assert folder_name("good") == "good_defect"
    assert folder_name("../..") == "defect"
