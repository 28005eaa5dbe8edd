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
    assert load_model(folder).backend == "openvino"  # auto: the matching export, on OpenVINO
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


def test_loading_an_export_imports_neither_onnx_nor_anomalib(padim_tiled, tmp_path: Path):
    """A worker's first load of an exported model: the runtime reads the file and its tags, so
    the ``onnx`` package (1 s to import, and a second parse of the file) is not needed, nor
    anomalib and Lightning (only building the torch network needs them)."""
    from tests.conftest import run_python

    folder = tmp_path / "model"
    shutil.copytree(padim_tiled.artifact_path.parent, folder)
    export_onnx(folder)
    img = save(add_defect(texture(128, 256, 7, 1), 64, 120, 7), tmp_path / "d.png", bits=16)
    for backend, runs_on in (("auto", "openvino"), ("onnx", "onnx")):
        code = (
            "import sys; from workers.anomaly import load_model, predict; "
            f"m = load_model({str(folder)!r}, device='cpu', backend={backend!r}); "
            f"assert m.backend == {runs_on!r}, m.backend; assert predict(m, {str(img)!r}).regions; "
            "heavy = {'onnx', 'anomalib', 'lightning', 'timm'} & {n.split('.')[0] for n in sys.modules}; "
            "assert not heavy, heavy"
        )
        run_python(code, timeout=300)


@pytest.fixture(scope="module")
def efficientad_whole(rgb_normals, tmp_path_factory: pytest.TempPathFactory):
    """EfficientAD-S, random teacher, a few steps: enough to have real convolutions to quantize."""
    from workers.anomaly import TrainConfig, train

    config = TrainConfig(model="efficientad", input_size=256, steps=3, teacher="random")
    return train(config, rgb_normals, tmp_path_factory.mktemp("efficientad"))


def test_int8_export_runs_through_openvino_and_stays_close(
    efficientad_whole, rgb_normals, tmp_path
):
    from workers.anomaly import export_openvino_int8

    folder = tmp_path / "model"
    shutil.copytree(efficientad_whole.artifact_path.parent, folder)
    with pytest.raises(MissingWeightsError, match="--int8"):
        load_model(folder, backend="openvino-int8")
    figures = export_openvino_int8(folder, rgb_normals)
    assert (folder / "model_int8.xml").is_file() and (folder / "model_int8.bin").is_file()
    assert (folder / "model.onnx").is_file()  # made on the way
    assert figures["calibration_inputs"] == len(rgb_normals)
    assert figures["pixel_error_p99"] <= 0.05
    int8 = load_model(folder, backend="openvino-int8")
    assert int8.backend == "openvino-int8"
    assert load_model(folder).backend == "openvino-int8"  # auto takes the verified INT8 export
    img = save(add_defect(texture(128, 128, 99), 60, 60, 12), tmp_path / "d.png")
    fp32 = predict(load_model(folder, backend="torch"), img)
    quantized = predict(int8, img)
    assert quantized.heatmap.shape == fp32.heatmap.shape
    assert np.corrcoef(quantized.score_map.ravel(), fp32.score_map.ravel())[0, 1] > 0.95


def test_int8_export_that_would_damage_the_model_writes_nothing(
    padim_tiled, gray16_normals, tmp_path
):
    from workers.anomaly import IncompatibleModelError, export_openvino_int8

    folder = tmp_path / "model"
    shutil.copytree(padim_tiled.artifact_path.parent, folder)
    with pytest.raises(IncompatibleModelError, match="keep the fp32 export"):
        export_openvino_int8(folder, gray16_normals, max_pixel_error=0.0)
    assert not list(folder.glob("model_int8*"))
    assert load_model(folder).backend == "openvino"  # auto: the fp32 export through OpenVINO
    with pytest.raises(IncompatibleModelError, match="at least one"):
        export_openvino_int8(folder, [])


def test_stale_int8_export_is_ignored(efficientad_whole, rgb_normals, tmp_path: Path):
    from workers.anomaly import export_openvino_int8

    folder = tmp_path / "model"
    shutil.copytree(efficientad_whole.artifact_path.parent, folder)
    export_openvino_int8(folder, rgb_normals[:2])
    import torch

    blob = torch.load(folder / "model.pt", weights_only=True)
    blob["model_id"] = "1" * 32  # as if retrained in place
    torch.save(blob, folder / "model.pt")
    assert load_model(folder).backend == "torch"  # neither the ONNX nor the INT8 file matches
    with pytest.raises(MissingWeightsError):
        load_model(folder, backend="openvino-int8")
