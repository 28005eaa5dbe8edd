"""Shading correction: each image divided by its own blurred brightness before a model sees it,
so that normal photos lit differently look alike and a stain does not hide in a gradient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workers.anomaly import ConfigError, TrainConfig, load_model, predict, train
from workers.anomaly.image_io import correct_shading
from workers.anomaly.tiling import Geometry

from .conftest import assert_onnx_gives_the_same_map, save, texture

pytestmark = pytest.mark.ml


def lit(img: np.ndarray, left: float, right: float) -> np.ndarray:
    """``img`` under a light that falls from ``left`` to ``right`` across it."""
    gain = np.linspace(left, right, img.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(img * gain, 0, 1)


def stained(img: np.ndarray, cy: int, cx: int, radius: int = 7) -> np.ndarray:
    """A spot 35 % darker than its surroundings: a stain, not a hole."""
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    out = img.copy()
    out[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] *= 0.65
    return out


def test_the_lighting_goes_and_a_stain_stays():
    surface = texture(200, 300, 0)
    even, gradient = lit(surface, 0.9, 0.9), lit(surface, 0.4, 1.0)

    def step(a: np.ndarray) -> float:  # right half's mean grey less the left half's
        return float(a[:, 150:].mean() - a[:, :150].mean())

    assert step(gradient) > 0.12  # the light, before
    flat = correct_shading(gradient, 0.2)
    assert abs(step(flat)) < 0.3 * step(gradient)
    # one surface under two lights (and a third, uniformly darker) comes out nearly the same
    assert np.abs(flat - correct_shading(even, 0.2)).mean() < 0.02
    assert np.abs(correct_shading(even * 0.6, 0.2) - correct_shading(even, 0.2)).max() < 0.01
    spot = correct_shading(stained(gradient, 100, 60), 0.2)
    inside, far = (slice(95, 106), slice(55, 66)), (slice(95, 106), slice(200, 260))
    assert spot[inside].mean() < 0.8 * flat[inside].mean()  # still a third darker
    assert np.abs(spot[far] - flat[far]).max() < 0.02  # and only there


def test_types_layouts_and_off():
    surface = texture(120, 90, 1)
    for dtype, full in ((np.uint8, 255), (np.uint16, 65535)):
        pixels = np.round(lit(surface, 0.5, 1.0) * full).astype(dtype)
        for layout in (pixels, pixels[:, :, :1]):  # colour and grey
            out = correct_shading(layout, 0.2)
            assert out.dtype == dtype and out.shape == layout.shape
            assert abs(out.mean() / full - 0.45) < 0.01  # one grey level for every photo
        assert (
            np.abs(
                correct_shading(pixels, 0.2) / full - correct_shading(lit(surface, 0.5, 1.0), 0.2)
            ).max()
            < 0.01
        )
    grey = correct_shading(surface[:, :, :1], 0.3)
    assert grey.shape == (120, 90, 1) and grey.dtype == np.float32
    # colour ratios survive: every channel is divided by the same brightness
    out = correct_shading(lit(surface, 0.5, 1.0), 0.2)
    ratio = out[..., 2].mean() / out[..., 0].mean()
    assert ratio == pytest.approx(surface[..., 2].mean() / surface[..., 0].mean(), abs=0.03)
    assert correct_shading(surface, 0) is surface
    before = surface.copy()
    correct_shading(surface, 0.2)
    assert np.array_equal(surface, before)  # the caller's pixels are left as they were
    with pytest.raises(ConfigError, match="shorter side"):
        TrainConfig(model="padim", shading=1.5).validate()
    with pytest.raises(ConfigError, match="shading"):
        TrainConfig(model="padim", shading=-0.1).validate()
    # an artifact from before the option has no "shading" in its geometry: off
    assert Geometry(**{"input_size": 64, "scale": None, "tile_overlap": 0.25}).shading == 0


def test_a_model_trained_under_one_light_judges_photos_taken_under_another(tmp_path: Path):
    """Eight normal photos lit evenly (at two brightnesses); the line's new lamp lights the
    part from one side. Without correction every photo under the new lamp is judged anomalous,
    with three or more suggested regions; with it, none is, and stains under the new lamp are
    still found. The artifact
    stores the correction, so the loaded model and its ONNX export apply it too."""
    normals = [
        save(lit(texture(160, 160, i), g, g), tmp_path / f"n{i}.png")
        for i, g in enumerate([0.8, 0.8, 0.8, 0.8, 0.95, 0.95, 0.95, 0.95])
    ]
    new_lamp = [save(lit(texture(160, 160, 20 + i), 0.45, 1.2), tmp_path / f"g{i}.png")
                for i in range(4)]  # fmt: skip
    stains = [
        save(stained(lit(texture(160, 160, 30 + i), 0.45, 1.2), 50 + 20 * i, 80), tmp_path / f"s{i}.png")
        for i in range(4)
    ]  # fmt: skip
    outcomes = {}
    for shading in (0.0, 0.2):
        config = TrainConfig(
            model="padim", input_size=128, calibration_fraction=0.25, shading=shading
        )
        folder = Path(train(config, normals, tmp_path / f"m{shading}").artifact_path).parent
        model = load_model(folder)
        outcomes[shading] = (
            [predict(model, p) for p in new_lamp],
            [len(predict(model, p).regions) for p in stains],
        )
    (plain_normal, _), (normal, found) = outcomes[0.0], outcomes[0.2]
    assert all(len(p.regions) >= 1 and p.is_anomalous for p in plain_normal), outcomes
    # a suggestion on about one normal image in four is what the calibration aims at
    # (TrainConfig.suggest_rate); none of them is judged anomalous
    assert sum(len(p.regions) for p in normal) <= 1, outcomes
    assert not any(p.is_anomalous for p in normal) and all(n >= 1 for n in found), outcomes
    blob = json.loads((folder / "model.json").read_text())
    assert blob["geometry"]["shading"] == 0.2 and blob["train_config"]["shading"] == 0.2
    assert_onnx_gives_the_same_map(folder, stains[0])
