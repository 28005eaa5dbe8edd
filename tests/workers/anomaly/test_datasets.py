"""Masks are paired by name, never by sort order (anomalib Folder's trap)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from workers.anomaly import ConfigError, mvtec_test, pair_masks

from .conftest import DATASETS

pytestmark = pytest.mark.ml


def make_layout(root: Path) -> None:
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "crack").mkdir(parents=True)
    (root / "ground_truth" / "crack").mkdir(parents=True)
    cv2.imwrite(str(root / "test" / "good" / "g.png"), np.zeros((8, 8), np.uint8))
    # "a" < "a_b" for images but "a_b_mask" < "a_mask" for masks: sorted pairing swaps them.
    for i, stem in enumerate(["a", "a_b"]):
        cv2.imwrite(str(root / "test" / "crack" / f"{stem}.png"), np.full((8, 8), i, np.uint8))
        cv2.imwrite(
            str(root / "ground_truth" / "crack" / f"{stem}_mask.png"),
            np.full((8, 8), 100 + i, np.uint8),
        )


def test_masks_pair_by_name_where_sort_order_differs(tmp_path: Path):
    make_layout(tmp_path)
    images = sorted((tmp_path / "test" / "crack").iterdir())
    masks = sorted((tmp_path / "ground_truth" / "crack").iterdir())
    assert [m.name for m in masks] == ["a_b_mask.png", "a_mask.png"]  # the trap is real here
    samples = mvtec_test(tmp_path)
    assert [s.defect_type for s in samples] == ["crack", "crack", "good"]
    for sample in samples[:2]:
        assert sample.mask.name == f"{sample.image.stem}_mask.png"
        img_val = int(cv2.imread(str(sample.image), cv2.IMREAD_GRAYSCALE)[0, 0])
        mask_val = int(cv2.imread(str(sample.mask), cv2.IMREAD_GRAYSCALE)[0, 0])
        assert mask_val == 100 + img_val
    assert samples[2].mask is None and not samples[2].is_anomalous
    assert len(images) == 2


def test_missing_mask_is_an_error(tmp_path: Path):
    make_layout(tmp_path)
    (tmp_path / "ground_truth" / "crack" / "a_mask.png").unlink()
    with pytest.raises(ConfigError, match="a_mask.png"):
        mvtec_test(tmp_path)


def test_magnetic_tile_masks_pair_by_stem():
    root = DATASETS / "magnetic_tile"
    if not root.is_dir():
        pytest.skip(f"dataset magnetic_tile not found at {root} (set LOUPE_DATASETS)")
    samples = [s for s in mvtec_test(root) if s.mask is not None]
    assert len(samples) == 50
    for s in samples:
        assert s.mask.name == f"{s.image.stem}_mask.png"
        assert s.mask.parent.name == s.image.parent.name
    images = [s.image for s in samples if s.defect_type == "crack"]
    assert len(pair_masks(images, root / "ground_truth" / "crack")) == 10


def test_layout_rules_are_the_formats_rules(tmp_path: Path):
    """Suffixes in any case (WebP too), <stem>.png masks, dot files ignored: the rules of
    annotations.formats.mvtec_layout, which the importer and the exporter use too."""
    from workers.anomaly.datasets import find_mask, mvtec_train

    (tmp_path / "train" / "good").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "good" / "n.PNG"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(tmp_path / "train" / "good" / "o.webp"), np.zeros((8, 8), np.uint8))
    (tmp_path / "train" / "good" / "._n.png").write_bytes(b"AppleDouble")
    (tmp_path / "train" / "good" / "notes.txt").write_text("not an image")
    assert [p.name for p in mvtec_train(tmp_path)] == ["n.PNG", "o.webp"]
    crack, gt = tmp_path / "test" / "crack", tmp_path / "ground_truth" / "crack"
    crack.mkdir(parents=True)
    gt.mkdir(parents=True)
    for name in ("u.JPG", "v.png", "w.png", "w_mask.png"):
        cv2.imwrite(str(crack / name), np.zeros((8, 8), np.uint8))
    for name in ("u_mask.PNG", "v.png", "w_mask.png"):
        cv2.imwrite(str(gt / name), np.zeros((8, 8), np.uint8))
    assert find_mask(crack / "u.JPG", gt) == gt / "u_mask.PNG"
    assert find_mask(crack / "v.png", gt) == gt / "v.png"
    # w_mask.png is image w's <stem>_mask.png and image w_mask's <stem>.png: never guessed
    with pytest.raises(ConfigError, match="share one mask"):
        pair_masks(sorted(crack.iterdir()), gt)
    cv2.imwrite(str(gt / "v_mask.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(ConfigError, match="ambiguous masks"):
        find_mask(crack / "v.png", gt)


def test_no_test_folder_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not a folder"):
        mvtec_test(tmp_path)
