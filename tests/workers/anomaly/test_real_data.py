"""One small end-to-end run on real MVTec bottle images (skipped without the datasets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.anomaly import TrainConfig, mvtec_test, mvtec_train, predict, train

from .conftest import DATASETS

pytestmark = [pytest.mark.ml, pytest.mark.datasets]


def test_padim_on_six_bottle_images_ranks_a_broken_bottle_above_a_good_one(tmp_path: Path):
    root = DATASETS / "mvtec_bottle"
    if not root.is_dir():
        pytest.skip(f"dataset mvtec_bottle not found at {root} (set LOUPE_DATASETS)")
    result = train(TrainConfig(model="padim", input_size=128), mvtec_train(root)[:6], tmp_path)
    samples = mvtec_test(root)
    broken = next(s for s in samples if s.defect_type == "broken_large")
    good = next(s for s in samples if s.defect_type == "good")
    bad_pred = predict(result.artifact_path, broken.image)
    good_pred = predict(result.artifact_path, good.image)
    assert bad_pred.image_size == (900, 900)
    assert bad_pred.image_score > good_pred.image_score
    assert bad_pred.is_anomalous and bad_pred.regions
