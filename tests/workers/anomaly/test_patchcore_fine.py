"""``patchcore_fine``: PatchCore on the backbone's stride-4 and stride-8 features."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.anomaly import TrainConfig, load_model, predict, train
from workers.anomaly.models.patchcore import FINE_LAYERS, LAYERS

from .conftest import add_defect, assert_onnx_gives_the_same_map, save, texture

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def fine_and_standard(rgb_normals: list[Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("patchcore_fine")
    return {
        name: train(TrainConfig(model=name, input_size=64, scale=1.0), rgb_normals, out / name)
        for name in ("patchcore_fine", "patchcore")
    }


def test_fine_features_give_four_times_the_patches_and_are_stored(fine_and_standard):
    fine, standard = fine_and_standard["patchcore_fine"], fine_and_standard["patchcore"]
    # the same tiles (128 px images in 64 px tiles, 9 each, of the images not held out for
    # calibration); a 64 px tile has 16 x 16 patches at stride 4 and 8 x 8 at stride 8
    tiles = standard.metrics["patches_seen"] // (8 * 8)
    assert tiles % 9 == 0 and standard.metrics["patches_seen"] == tiles * 8 * 8
    assert fine.metrics["patches_seen"] == tiles * 16 * 16
    # coreset_ratio counts standard patches: the banks have as many rows
    assert fine.metrics["memory_bank"] == standard.metrics["memory_bank"]
    blob = torch.load(fine.artifact_path, map_location="cpu", weights_only=True)
    assert blob["net_args"]["layers"] == list(FINE_LAYERS)
    loaded = load_model(fine.artifact_path, backend="torch")
    assert loaded.kind == "patchcore_fine" and loaded.net.layers == FINE_LAYERS
    assert load_model(standard.artifact_path, backend="torch").net.layers == LAYERS


def test_fine_map_follows_a_small_defect_closer(fine_and_standard, tmp_path: Path):
    """The point of the finer layers: the map hugs the defect. Measured as the area where the
    map is above half its peak, around a defect of radius 3 (6 px across: smaller than a
    stride-16 cell): the standard layers spread it wider."""
    img = add_defect(texture(128, 128, 77), 70, 50, 3)
    path = save(img, tmp_path / "d.png")
    area = {}
    for name, result in fine_and_standard.items():
        pred = predict(load_model(result.artifact_path, backend="torch"), path)
        assert pred.is_anomalous, name
        m = pred.score_map
        ys, xs = np.unravel_index(np.argmax(m), m.shape)
        assert abs(ys - 70) <= 6 and abs(xs - 50) <= 6, (name, ys, xs)
        area[name] = int((m > (np.median(m) + m.max()) / 2).sum())
    assert area["patchcore_fine"] < 0.8 * area["patchcore"], area


def test_fine_exports_to_onnx_with_the_same_map(fine_and_standard, tmp_path: Path):
    folder = tmp_path / "m"
    shutil.copytree(fine_and_standard["patchcore_fine"].artifact_path.parent, folder)
    img = save(add_defect(texture(128, 128, 78), 40, 90, 5), tmp_path / "d.png")
    assert_onnx_gives_the_same_map(folder, img)


def test_a_patchcore_artifact_from_before_the_layer_choice_loads_with_the_standard_layers(
    fine_and_standard, tmp_path: Path
):
    standard = fine_and_standard["patchcore"].artifact_path
    folder = tmp_path / "old"
    shutil.copytree(standard.parent, folder)
    blob = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    assert blob["net_args"].pop("layers") == list(LAYERS)
    torch.save(blob, folder / "model.pt")
    img = save(add_defect(texture(128, 128, 79), 64, 64, 6), tmp_path / "d.png")
    old = predict(load_model(folder, backend="torch"), img)
    now = predict(load_model(standard, backend="torch"), img)
    assert np.array_equal(old.heatmap, now.heatmap)
