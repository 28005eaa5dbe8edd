"""The convolutional autoencoder (``TrainConfig(model="autoencoder")``) on tiny synthetic data.

It trains for a few dozen steps on 64 px inputs: these tests check behaviour (the map, the
artifact, the ONNX export, cancellation, the time budget), not accuracy, which
benchmarks/anomaly.py and docs/anomaly.md measure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.anomaly import (
    Cancelled,
    PredictConfig,
    TrainConfig,
    export_onnx,
    load_model,
    predict,
    train,
)
from workers.anomaly.models import autoencoder
from workers.anomaly.regions import RegionConfig

from .conftest import add_defect, save, texture

pytestmark = pytest.mark.ml

STEPS = 60


def _config(**overrides: object) -> TrainConfig:
    """Batch size and learning rate left to the model (4 and 1e-3, not EfficientAD's 1 and
    1e-4)."""
    settings = {"input_size": 64, "steps": STEPS}
    return TrainConfig(model="autoencoder", **{**settings, **overrides})


def _stored_config(result) -> dict:  # noqa: ANN001 - a TrainResult
    return json.loads((result.artifact_path.parent / "model.json").read_text())["train_config"]


@pytest.fixture(scope="module")
def trained(rgb_normals: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """A whole-image autoencoder, and the progress messages its training sent."""
    messages: list[str] = []
    result = train(
        _config(), rgb_normals, tmp_path_factory.mktemp("ae"), lambda f, m: messages.append(m)
    )
    return result, messages


def _losses(messages: list[str]) -> list[float]:
    return [float(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("step ")]


def test_it_trains_the_steps_asked_and_reports_each(trained):
    result, messages = trained
    assert result.metrics["steps_done"] == STEPS
    losses = _losses(messages)
    assert len(losses) == STEPS
    assert np.mean(losses[-10:]) < np.mean(losses[:10])  # it learns
    assert result.metrics["l2_mean"] > 0 and result.metrics["dssim_mean"] > 0


def test_it_trains_with_its_own_defaults_and_the_artifact_stores_them(trained):
    """Nothing set: batch 4 at 1e-3 (the model's), the user's steps; the artifact's
    train_config holds the values used, not None."""
    result, _ = trained
    assert result.metrics["batch_size"] == 4 and result.metrics["learning_rate"] == 1e-3
    stored = _stored_config(result)
    assert (stored["steps"], stored["batch_size"], stored["learning_rate"]) == (STEPS, 4, 1e-3)


def test_a_users_batch_size_and_learning_rate_win(rgb_normals, tmp_path: Path):
    config = _config(steps=2, batch_size=2, learning_rate=5e-4)
    result = train(config, rgb_normals, tmp_path)
    assert result.metrics["batch_size"] == 2 and result.metrics["learning_rate"] == 5e-4
    stored = _stored_config(result)
    assert (stored["steps"], stored["batch_size"], stored["learning_rate"]) == (2, 2, 5e-4)
    assert config.batch_size == 2 and TrainConfig(model="autoencoder").batch_size is None


def test_the_defect_scores_above_the_background_after_save_and_load(trained, tmp_path: Path):
    result, _ = trained
    model = load_model(result.artifact_path, device="cpu", backend="torch")
    assert model.kind == "autoencoder"
    # the error normalisers are in the state_dict, so the loaded network has them
    assert float(model.net.l2_mean) == pytest.approx(result.metrics["l2_mean"], rel=1e-5)
    assert float(model.net.dssim_mean) == pytest.approx(result.metrics["dssim_mean"], rel=1e-5)
    path = save(add_defect(texture(128, 128, 50), 60, 70, 8), tmp_path / "d.png")
    pred = predict(model, path, PredictConfig(regions=RegionConfig(min_area=20)))
    heat = pred.score_map
    assert heat.shape == (128, 128)
    yy, xx = np.mgrid[:128, :128]
    far = (yy - 60) ** 2 + (xx - 70) ** 2 > 24**2
    assert heat[60, 70] > np.percentile(heat[far], 99)
    assert pred.regions
    x, y, w, h = pred.regions[0].box
    assert x <= 70 <= x + w and y <= 60 <= y + h
    normal = predict(model, save(texture(128, 128, 51), tmp_path / "n.png"))
    assert normal.image_score < pred.image_score


def test_ssim_is_the_gaussian_window_ssim_of_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = texture(48, 48, 1)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    b[10:20, 10:20] = 0.1
    _, reference = structural_similarity(
        a,
        b,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    net = autoencoder.build({})
    ours = net.ssim(*(torch.from_numpy(v).permute(2, 0, 1)[None] for v in (a, b)))
    ours = ours[0].permute(1, 2, 0).numpy()
    inner = (slice(5, -5), slice(5, -5))  # the borders are padded differently
    np.testing.assert_allclose(ours[inner], reference[inner], atol=1e-4)
    same = net.ssim(
        torch.from_numpy(a).permute(2, 0, 1)[None], torch.from_numpy(a).permute(2, 0, 1)[None]
    )
    assert torch.allclose(same, torch.ones_like(same), atol=1e-5)


def test_onnx_export_gives_the_torch_map(trained, tmp_path: Path):
    result, _ = trained
    onnx_path = export_onnx(result.artifact_path)
    assert onnx_path == result.artifact_path.parent / "model.onnx"
    torch_model = load_model(result.artifact_path, backend="torch")
    onnx_model = load_model(result.artifact_path, backend="onnx")
    assert onnx_model.backend == "onnx"
    path = save(add_defect(texture(128, 128, 52), 40, 90, 7), tmp_path / "d.png")
    a, b = predict(torch_model, path), predict(onnx_model, path, PredictConfig(batch_size=3))
    assert np.abs(a.score_map - b.score_map).max() < 1e-3
    assert a.image_score == pytest.approx(b.image_score, abs=1e-3)
    assert [r.box for r in a.regions] == [r.box for r in b.regions]


def test_cancellation_stops_training_promptly_and_writes_nothing(rgb_normals, tmp_path: Path):
    calls: list[str] = []

    def progress(fraction: float, message: str) -> None:
        calls.append(message)
        if message.startswith("step 2/"):
            raise Cancelled("user pressed cancel")

    with pytest.raises(Cancelled):
        train(_config(steps=50), rgb_normals, tmp_path, progress)
    assert calls[-1].startswith("step 2/")
    assert not (tmp_path / "model.pt").exists()


def test_tiled_training_stops_at_the_time_budget(rgb_normals, tmp_path: Path):
    config = _config(scale=1.0, steps=10_000, max_seconds=0.01)
    result = train(config, rgb_normals, tmp_path)
    assert 1 <= result.metrics["steps_done"] < 10_000
    pred = predict(result.artifact_path, rgb_normals[0])
    assert pred.heatmap.shape == (128, 128) and np.isfinite(pred.score_map).all()
