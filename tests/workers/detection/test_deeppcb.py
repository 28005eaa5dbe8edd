"""Reading the DeepPCB developer set (skipped when ../shared/datasets is absent)."""

from __future__ import annotations

import pytest
import torch

from workers.detection.data import CocoDetectionDataset, collate_train
from workers.detection.model import build_model

from .conftest import datasets_root, tiny_model_config

pytestmark = [pytest.mark.ml, pytest.mark.datasets]


@pytest.fixture(scope="module")
def deeppcb() -> CocoDetectionDataset:
    root = datasets_root() / "deeppcb"
    if not (root / "annotations.json").is_file():
        pytest.skip(f"DeepPCB not found at {root} (set LOUPE_DATASETS to ../shared/datasets)")
    return CocoDetectionDataset(
        root / "annotations.json",
        root,
        image_filter=lambda img: img.get("official_split") == "trainval",
    )


def test_official_split_categories_and_boxes(deeppcb: CocoDetectionDataset) -> None:
    assert len(deeppcb) == 150
    assert [c.name for c in deeppcb.categories] == [
        "open",
        "short",
        "mousebite",
        "spur",
        "copper",
        "pin-hole",
    ]
    sample = deeppcb[0]
    assert sample.image.shape == (640, 640, 3)  # grey scans come back as RGB
    assert len(sample.boxes) >= 1 and (sample.boxes[:, 2:] > sample.boxes[:, :2]).all()
    assert sample.labels.min() >= 0 and sample.labels.max() < 6


def test_one_training_step_on_real_images(deeppcb: CocoDetectionDataset) -> None:
    import random

    batch = collate_train([deeppcb[0], deeppcb[1]], 320, random.Random(0))
    model = build_model(tiny_model_config(num_classes=6)).train()
    losses = model.loss(batch.images, batch.gt_labels, batch.gt_bboxes, batch.pad_gt_mask)
    assert torch.isfinite(losses["loss"]) and losses["loss_iou"] > 0
