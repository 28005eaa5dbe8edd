"""Multi-scale models (``TrainConfig.multiscale``): one network per input size in one module,
each branch's map on its normal images' scale, fused; trained, saved, loaded and exported
like any model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.anomaly import (
    ConfigError,
    PredictConfig,
    TrainConfig,
    export_onnx,
    load_model,
    predict,
    train,
)
from workers.anomaly.multiscale import MultiScaleNet, ScaleBranch

from .conftest import add_defect, save, texture

pytestmark = pytest.mark.ml


class _Level(torch.nn.Module):
    """Distance from a level: a map whose scale is known."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * x.mean(1, keepdim=True)


def test_branches_are_put_on_one_scale_then_fused():
    x = torch.rand(2, 3, 64, 64)
    for fusion, join in (("max", torch.maximum), ("mean", lambda a, b: (a + b) / 2)):
        net = MultiScaleNet([ScaleBranch(_Level(1.0), 1), ScaleBranch(_Level(100.0), 2)], fusion)
        net.lo.copy_(torch.tensor([0.1, 10.0]))
        net.span.copy_(torch.tensor([0.5, 50.0]))
        out = net(x)
        assert out.shape == (2, 1, 64, 64)
        fine = ((x.mean(1, keepdim=True) - 0.1) / 0.5).clamp_min(0)
        small = torch.nn.functional.avg_pool2d(x, 2).mean(1, keepdim=True) * 100.0
        coarse = torch.nn.functional.interpolate((small - 10.0) / 50.0, size=(64, 64),
                                                 mode="bilinear").clamp_min(0)  # fmt: skip
        torch.testing.assert_close(out, join(fine, coarse))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"multiscale": (128,)}, "two or more"),
        ({"multiscale": (128, 128)}, "two or more"),
        ({"multiscale": (256, 128)}, "input_size=256"),
        ({"multiscale": (128, 96)}, "must divide"),
        ({"multiscale": (128, 64), "multiscale_fusion": "median"}, "multiscale_fusion"),
    ],
)
def test_bad_multiscale_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(model="padim", input_size=128, **kwargs).validate()
    TrainConfig(model="padim", input_size=128, multiscale=(128, 64)).validate()


@pytest.fixture(scope="module")
def normals(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ms_normals")
    return [save(texture(128, 128, 40 + i), folder / f"n{i}.png") for i in range(6)]


@pytest.fixture(scope="module")
def padim_ms(normals, tmp_path_factory: pytest.TempPathFactory):
    config = TrainConfig(model="padim", input_size=128, multiscale=(128, 64), padim_features=20)
    return train(config, normals, tmp_path_factory.mktemp("padim_ms"))


def test_a_multiscale_model_trains_predicts_and_loads_as_its_base_model(padim_ms, tmp_path):
    blob = torch.load(padim_ms.artifact_path, weights_only=True)
    assert blob["kind"] == "padim"  # the app and the runtimes see a PaDiM
    ms = blob["net_args"]["multiscale"]
    assert ms["sizes"] == [128, 64] and ms["fusion"] == "mean" and len(ms["branches"]) == 2
    assert list(blob["train_config"]["multiscale"]) == [128, 64]
    for size in (128, 64):
        metrics = padim_ms.metrics
        assert metrics[f"s{size}_pixel_threshold"] > metrics[f"s{size}_pixel_lo"]
    # each branch's map is on its normal images' scale: 0.5 at its pixel threshold
    span = blob["state_dict"]["span"]
    assert span.shape == (2,) and bool((span > 0).all())
    model = load_model(padim_ms.artifact_path, device="cpu", backend="torch")
    assert model.kind == "padim" and len(model.net.branches) == 2
    assert [b.factor for b in model.net.branches] == [1, 2]
    defect = save(add_defect(texture(128, 128, 99), 64, 64, 10), tmp_path / "d.png")
    pred = predict(model, defect, PredictConfig())
    assert pred.is_anomalous and pred.regions
    box = pred.regions[0].box
    assert box[0] <= 64 <= box[0] + box[2] and box[1] <= 64 <= box[1] + box[3]
    normal = save(texture(128, 128, 77), tmp_path / "n.png")
    assert predict(model, normal).image_score < pred.image_score


def test_a_multiscale_model_exports_to_onnx(padim_ms, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(padim_ms.artifact_path.parent, folder)
    export_onnx(folder)
    torch_model = load_model(folder, backend="torch")
    onnx_model = load_model(folder, backend="onnx")
    assert onnx_model.backend == "onnx"
    img = save(add_defect(texture(128, 128, 5), 40, 90, 8), tmp_path / "d.png")
    a, b = predict(torch_model, img), predict(onnx_model, img)
    assert np.abs(a.heatmap.astype(int) - b.heatmap.astype(int)).max() <= 2
    assert a.image_score == pytest.approx(b.image_score, abs=0.01)
    assert len(a.regions) == len(b.regions)


def test_a_tiled_multiscale_model_sees_the_same_area_at_each_size(tmp_path):
    """Tiled: the 64 px branch of 128 px tiles at scale 1 is fitted on 64 px tiles at scale
    0.5, the same area as the full tiles."""
    normals = [save(texture(128, 256, i, 1), tmp_path / f"n{i}.png") for i in range(5)]
    config = TrainConfig(
        model="padim", input_size=128, scale=1.0, multiscale=(128, 64), padim_features=20
    )
    result = train(config, normals, tmp_path / "m")
    # 128 x 256 at scale 1: 1 x 3 tiles of 128; at 0.5 (64 x 128): 1 x 3 tiles of 64
    assert result.metrics["s128_tiles"] == result.metrics["s64_tiles"]
    model = load_model(result.artifact_path, device="cpu", backend="torch")
    defect = save(add_defect(texture(128, 256, 9, 1), 64, 180, 9), tmp_path / "d.png")
    pred = predict(model, defect)
    assert pred.is_anomalous and pred.regions
