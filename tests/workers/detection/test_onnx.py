"""ONNX export and ONNX Runtime inference agree with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.detection.artifact import load_artifact
from workers.detection.data import load_image, to_tensor
from workers.detection.inference import Detector
from workers.detection.onnx_export import OnnxDetector, export_onnx

pytestmark = pytest.mark.ml


def test_onnx_matches_torch(trained: dict, tmp_path: Path) -> None:
    onnx_path = export_onnx(trained["path"], tmp_path / "model.onnx", size=128)
    ort = OnnxDetector(onnx_path)
    assert [c.name for c in ort.categories] == ["red", "blue"] and ort.size == 128

    model, _, _ = load_artifact(trained["path"])
    image = load_image(Path(trained["coco"]).parent / "img" / "0.png")
    batch = to_tensor([image])
    with torch.no_grad():
        scores, boxes = model(batch)
    o_scores, o_boxes = ort.raw(batch.numpy())
    np.testing.assert_allclose(o_scores, scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(o_boxes, boxes.numpy(), atol=1e-2)

    torch_dets = Detector.load(trained["path"], device="cpu").predict(image, 0.3)
    onnx_dets = ort.predict(image, 0.3)
    assert len(onnx_dets) == len(torch_dets) >= 2
    for a, b in zip(torch_dets, onnx_dets, strict=True):
        assert a.category_id == b.category_id
        assert abs(a.score - b.score) < 1e-3
        assert max(abs(a.x1 - b.x1), abs(a.y2 - b.y2)) < 0.05


def test_missing_onnx_file_says_how_to_make_it(tmp_path: Path) -> None:
    from workers.detection.errors import WeightsNotFound

    with pytest.raises(WeightsNotFound, match="export-onnx"):
        OnnxDetector(tmp_path / "none.onnx")
