"""ONNX export: same heatmap and regions as torch, and never paired with another model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from workers.anomaly import MissingWeightsError, export_onnx, load_model, predict

from .conftest import add_defect, save, texture

pytestmark = pytest.mark.ml


def test_onnx_export_predicts_like_torch(padim_tiled, tmp_path: Path):
    folder = tmp_path / "model"
    shutil.copytree(padim_tiled.artifact_path.parent, folder)
    with pytest.raises(MissingWeightsError, match="export"):
        load_model(folder, backend="onnx")
    onnx_path = export_onnx(folder)
    assert onnx_path == folder / "model.onnx"
    torch_model = load_model(folder, backend="torch")
    onnx_model = load_model(folder, backend="onnx")
    assert torch_model.backend == "torch" and onnx_model.backend == "onnx"
    assert load_model(folder).backend == "onnx"  # auto prefers the matching export on CPU
    openvino_model = load_model(folder, backend="openvino")
    assert openvino_model.backend == "openvino"
    img = save(add_defect(texture(128, 256, 7, 1), 64, 120, 7), tmp_path / "d.png", bits=16)
    a = predict(torch_model, img)
    for exported in (onnx_model, openvino_model):
        b = predict(exported, img)
        assert np.abs(a.heatmap.astype(int) - b.heatmap.astype(int)).max() <= 2
        assert len(a.regions) == len(b.regions) == 1
        assert a.image_score == pytest.approx(b.image_score, abs=0.01)


def test_stale_export_is_ignored(padim_tiled, rgb_normals, tmp_path: Path):
    """An export made for one model must not be used for a retrained one in the same folder."""
    folder = tmp_path / "model"
    shutil.copytree(padim_tiled.artifact_path.parent, folder)
    export_onnx(folder)
    other = tmp_path / "other"
    shutil.copytree(padim_tiled.artifact_path.parent, other)
    shutil.copy(folder / "model.onnx", other / "model.onnx")
    import torch

    blob = torch.load(other / "model.pt", weights_only=True)
    blob["model_id"] = "0" * 32  # as if retrained
    torch.save(blob, other / "model.pt")
    assert load_model(other).backend == "torch"
    with pytest.raises(MissingWeightsError):
        load_model(other, backend="onnx")
