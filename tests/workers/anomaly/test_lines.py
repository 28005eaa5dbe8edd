"""The dark-line detector (``models/lines.py``) alone and beside another model
(``TrainConfig.lines``): its valleys against scikit-image's Sato filter, a crack among grinding
marks on synthetic tiles, the companion's files, loading and switch, a real magnetic-tile crack
(skipped without the datasets). benchmarks/anomaly.py and docs/anomaly.md measure quality.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from workers.anomaly import (
    PredictConfig,
    TrainConfig,
    load_model,
    predict,
    predict_batch,
    predict_many,
    train,
)
from workers.anomaly.errors import ConfigError
from workers.anomaly.image_io import read_pixels
from workers.anomaly.inference import line_parts, normalise
from workers.anomaly.models import lines
from workers.anomaly.training import _split

from .conftest import DATASETS, assert_onnx_gives_the_same_map, save, texture

pytestmark = pytest.mark.ml


def _tile(seed: int, crack: bool = False) -> np.ndarray:
    """A 128 px tile with faint dark grinding marks (1 px columns, 0.06 darker) at random
    places; ``crack``: a deep dark line (0.35 darker, 2 px) from the top edge down 40 px."""
    rng = np.random.default_rng(seed)
    img = texture(128, 128, seed) * 0.6 + 0.2
    for x in rng.choice(np.arange(4, 124), size=6, replace=False):
        img[:, x] -= 0.06
    if crack:
        img[0:40, 70:72] -= 0.35
    return np.clip(img, 0, 1)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("tiles")
    normals = [save(_tile(i), folder / f"n{i}.png") for i in range(12)]
    return {
        "normals": normals,
        "crack": save(_tile(100, crack=True), folder / "crack.png"),
        "good": save(_tile(101), folder / "good.png"),
    }


def test_valleys_are_satos_dark_ridges():
    skimage_filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(0)
    grey = rng.random((64, 64)).astype(np.float32)
    grey = np.asarray(torch.nn.functional.avg_pool2d(torch.from_numpy(grey)[None], 3, 1, 1)[0])
    net = lines.LinesNet(64, sigma=1.5)
    rgb = torch.from_numpy(np.repeat(grey[None, None], 3, axis=1))
    ours = net.valleys(rgb)[0, 0].numpy()[8:-8, 8:-8]  # borders: replicate against reflect
    theirs = skimage_filters.sato(grey, sigmas=[1.5], black_ridges=True)[8:-8, 8:-8]
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99
    assert ((ours > 1e-4) == (theirs > 1e-4 * theirs.max() / ours.max())).mean() > 0.97


def test_a_dark_line_is_a_valley_and_a_bright_one_is_not():
    img = np.full((1, 3, 64, 64), 0.5, np.float32)
    img[..., 20:22] = 0.2  # dark, 2 px
    img[..., 44:46] = 0.8  # bright, 2 px
    depth = lines.LinesNet(64).valleys(torch.from_numpy(img))[0, 0].numpy()
    assert depth[32, 20:22].min() > 0.05
    assert depth[32, 44:46].max() < 1e-6  # on a bright line: none
    # at its foot the grey curves up as in a valley, less deep than the dark line's
    assert depth[32, 40:50].max() < 0.6 * depth[32, 20:22].min()
    assert depth[32, 30:36].max() < 1e-6  # flat grey


def test_the_line_model_finds_a_crack_among_grinding_marks(tiles: dict, tmp_path: Path):
    result = train(TrainConfig(model="lines", input_size=128), tiles["normals"], tmp_path)
    model = load_model(tmp_path, backend="torch")
    crack = predict(model, tiles["crack"])
    good = predict(model, tiles["good"])
    assert crack.is_anomalous and not good.is_anomalous
    assert crack.image_score > 2 * good.image_score
    hits = [r for r in crack.regions if r.box[0] <= 71 <= r.box[0] + r.box[2]]
    assert hits and min(r.box[1] for r in hits) < 40
    assert not good.regions
    assert result.metrics["tiles"] == result.metrics["train_images"]  # one per whole image
    assert_onnx_gives_the_same_map(tmp_path, tiles["crack"])


def test_lines_beside_padim_is_trained_kept_and_switched(tiles: dict, tmp_path: Path):
    config = TrainConfig(model="padim", input_size=128, lines=True)
    train(config, tiles["normals"], tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["lines"]["path"] == "lines/model.pt" and meta["coarse"] is None
    assert (tmp_path / "lines" / "model.pt").is_file()
    assert json.loads((tmp_path / "lines" / "model.json").read_text())["kind"] == "lines"
    model = load_model(tmp_path, backend="torch")
    assert model.lines is not None and model.lines.kind == "lines"
    both = predict(model, tiles["crack"])
    alone = predict(model, tiles["crack"], PredictConfig(lines=False))
    assert both.params["lines"] and not alone.params["lines"]
    seen = []
    predict(model, tiles["crack"], progress=lambda f, m: seen.append((f, m)))
    assert seen[-1] == (1.0, "line detector") and all(f < 1 for f, _ in seen[:-1])
    # the two calibrated maps' sum, calibrated again on the held-out normal images' sums
    fusion = model.calibration["with_lines"]
    assert fusion["suggest_rate"] == config.suggest_rate and fusion["flag_rate"] == config.flag_rate
    # the sum suggests, so its threshold is the predictive one; the two maps' own calibrations
    # only scale them before the sum, at the fit's own quantiles
    assert fusion["predictive"] and not model.calibration["predictive"]
    assert not model.lines.calibration["predictive"]
    line_only = predict(model.lines, tiles["crack"])
    total = alone.score_map + line_only.score_map
    np.testing.assert_allclose(
        both.score_map,
        normalise(total, fusion["pixel_lo"], fusion["pixel_threshold"]),
        rtol=1e-5,
        atol=1e-5,
    )
    expected = normalise(float(total.max()), fusion["image_lo"], fusion["image_threshold"])
    assert both.image_score == pytest.approx(expected, rel=1e-5)
    # the crack is where both maps see something: its peak with the line model stands higher
    # over the good tile's than PaDiM's alone does
    good_both = predict(model, tiles["good"])
    good_alone = predict(model, tiles["good"], PredictConfig(lines=False))
    assert both.image_score - good_both.image_score > alone.image_score - good_alone.image_score
    assert both.is_anomalous and not good_both.is_anomalous
    # and the calibration was fitted on those sums: the held-out normal images' maxima
    meta_config = meta["train_config"]
    _, held_out = _split(
        [Path(p) for p in tiles["normals"]], meta_config["calibration_fraction"], config.seed
    )
    sums = []
    for path in held_out:
        main_map, lines_map, _, _ = line_parts(model, read_pixels(path), PredictConfig())
        sums.append(float((main_map + lines_map).max()))
    np.testing.assert_allclose(fusion["normal_maxima"], sorted(sums), rtol=1e-5)
    # the app's batched paths join the two maps the same way
    paths = [tiles["crack"], tiles["good"]]
    many = [result for _, result in predict_many(model, paths, PredictConfig(batch_size=2))]
    batch = predict_batch(model, [(str(p), read_pixels(p)) for p in paths])
    for one, got_many, got_batch in zip((both, good_both), many, batch, strict=True):
        for got in (got_many, got_batch):
            assert got.params["lines"]
            assert got.image_score == pytest.approx(one.image_score, rel=1e-4, abs=1e-5)
            np.testing.assert_allclose(got.score_map, one.score_map, rtol=1e-4, atol=1e-4)
    # a model trained before the sum had its calibration joins the two by the maximum
    older = replace(
        model, calibration={k: v for k, v in model.calibration.items() if k != "with_lines"}
    )
    legacy = predict(older, tiles["crack"])
    np.testing.assert_allclose(
        legacy.score_map, np.maximum(alone.score_map, line_only.score_map), atol=1e-6
    )
    assert legacy.image_score == max(alone.image_score, line_only.image_score)


def test_tiles_with_a_whole_image_pass_and_the_line_detector_run_on_every_runtime(
    tiles: dict, tmp_path: Path
):
    """Both companions beside a tiled model: trained with the line model's own settings (not
    the main model's steps), exported with it, so that ONNX Runtime asked for by name runs all
    three."""
    config = TrainConfig(
        model="padim", input_size=64, scale=1.0, coarse_pass=True, lines=True, steps=7
    )
    train(config, tiles["normals"], tmp_path)
    model = load_model(tmp_path, backend="torch")
    assert model.coarse is not None and model.lines is not None
    lines_config = json.loads((tmp_path / "lines" / "model.json").read_text())["train_config"]
    assert lines_config["model"] == "lines" and lines_config["scale"] == 1.0
    assert not lines_config["lines"] and not lines_config["coarse_pass"]
    assert lines_config["steps"] != 7  # PaDiM's setting, not the line model's
    assert_onnx_gives_the_same_map(tmp_path, tiles["crack"])
    onnx = load_model(tmp_path, backend="onnx")
    assert onnx.lines.backend == "onnx" and onnx.coarse.backend == "onnx"
    assert (tmp_path / "lines" / "model.onnx").is_file()


def test_lines_is_refused_on_the_line_model_itself():
    with pytest.raises(ConfigError, match="beside another model"):
        TrainConfig(model="lines", lines=True).validate()


def test_a_real_magnetic_tile_crack_is_found_and_good_tiles_are_not(tmp_path: Path):
    root = DATASETS / "magnetic_tile"
    if not root.is_dir():
        pytest.skip(f"dataset magnetic_tile not found at {root} (set LOUPE_DATASETS)")
    normals = sorted((root / "train" / "good").glob("*.png"))[:40]
    train(TrainConfig(model="lines", input_size=256, shading=0.2), normals, tmp_path)
    model = load_model(tmp_path, backend="torch")
    pred = predict(model, root / "test" / "crack" / "exp2_num_85846.png")
    mask = cv2.imread(str(root / "ground_truth" / "crack" / "exp2_num_85846_mask.png"), 0) > 127
    boxes = [[round(v) for v in r.box] for r in pred.regions]
    assert pred.is_anomalous
    assert any(mask[y : y + h + 1, x : x + w + 1].any() for x, y, w, h in boxes)
    for good in ("exp2_num_144192", "exp5_num_11325"):  # grinding marks and all
        assert not predict(model, root / "test" / "good" / f"{good}.png").regions
