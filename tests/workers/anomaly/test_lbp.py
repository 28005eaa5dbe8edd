"""The LBP baseline (``TrainConfig(model="lbp")``): LBP codes against scikit-image's, the torch
scorer against scikit-learn's, and small fits on real bottle images (skipped without the
datasets). Behaviour only: benchmarks/anomaly.py and docs/anomaly.md measure quality.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from workers.anomaly import (
    Cancelled,
    PredictConfig,
    TrainConfig,
    TrainResult,
    export_onnx,
    load_model,
    models,
    predict,
    train,
)
from workers.anomaly.errors import ConfigError
from workers.anomaly.models import lbp

from .conftest import DATASETS

pytestmark = pytest.mark.ml

BOTTLE = DATASETS / "mvtec_bottle"


def _dataset(name: str) -> Path:
    root = DATASETS / name
    if not root.is_dir():
        pytest.skip(f"dataset {name} not found at {root} (set LOUPE_DATASETS)")
    return root


def _bottle_paths(kind: str, n: int) -> list[Path]:
    return sorted((_dataset("mvtec_bottle") / kind).glob("*.png"))[:n]


@pytest.fixture(scope="module")
def bottle_lbp(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The patch-wise model on eight bottle images (one held out for calibration)."""
    config = TrainConfig(model="lbp", input_size=256)
    return train(config, _bottle_paths("train/good", 8), tmp_path_factory.mktemp("lbp"))


def _grey(path: Path) -> np.ndarray:
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(grey, (300, 300), interpolation=cv2.INTER_AREA)  # uint8, real pixels


@pytest.mark.datasets
@pytest.mark.parametrize(
    "image", ["mvtec_bottle/test/broken_large/000.png", "magnetic_tile/test/crack"]
)
def test_lbp_codes_are_scikit_images_uniform_lbp(image: str):
    """Our P=24, R=3 codes equal ``local_binary_pattern(..., "uniform")`` except where a
    sample equals its centre exactly: there scikit-image's float64 rounding decides (its
    position arithmetic differs per pixel) and ours counts the tie as a 1, as defined."""
    feature = pytest.importorskip("skimage.feature")
    path = DATASETS / image
    if path.is_dir() or not path.exists():
        _dataset(image.split("/")[0])
        path = sorted(path.glob("*.png"))[0]
    grey = _grey(path)
    expected = feature.local_binary_pattern(grey, lbp.POINTS, lbp.RADIUS, method="uniform")
    kernels = lbp.circle_kernels()
    levels = torch.from_numpy(grey.astype(np.float64))[None, None]
    ours = lbp.lbp_codes(levels / 255, kernels)[0, 0].numpy()
    assert set(np.unique(ours)) <= set(range(lbp.BINS)) and len(np.unique(ours)) > 10
    samples = F.conv2d(levels, kernels, padding=lbp.RADIUS)
    tie = (samples - levels).abs().lt(1e-9).any(1)[0].numpy()
    differ = ours != expected
    assert not (differ & ~tie).any(), int((differ & ~tie).sum())
    assert differ.mean() < 0.005
    # the model's float32 codes: the same but for rare near-ties under float32 rounding
    single = lbp.lbp_codes((levels / 255).float(), kernels.float())[0, 0].numpy()
    assert (single != ours).mean() < 1e-3


def test_a_flat_image_is_all_ties_and_every_tie_is_a_one():
    flat = torch.full((1, 1, 16, 16), 0.4)
    codes = lbp.lbp_codes(flat, lbp.circle_kernels().float(), padding="reflect")
    assert torch.equal(codes, torch.full_like(codes, lbp.POINTS))


@pytest.mark.parametrize("scorer", ["ocsvm", "gaussian"])
def test_the_torch_scorer_is_scikit_learns(scorer: str):
    """Scaler, whitened PCA and the SVM's decision function as the network's torch ops: the
    patch score is minus ``OneClassSVM.decision_function`` (or the squared whitened norm)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    rng = np.random.default_rng(0)
    rows = rng.gamma(2.0, size=(500, lbp.FEATURES)) * rng.uniform(0.1, 10, lbp.FEATURES)
    scaler = StandardScaler().fit(rows)
    pca = PCA(n_components=lbp.PCA_VARIANCE, whiten=True, svd_solver="full")
    z = pca.fit_transform(scaler.transform(rows))
    svm = None
    if scorer == "ocsvm":
        svm = OneClassSVM(kernel="rbf", gamma=1.0 / (z.shape[1] * z.var()), nu=lbp.NU).fit(z)
    net = lbp.from_sklearn(32, 8, scaler, pca, svm)
    assert net.scorer == scorer
    test = np.concatenate([rng.gamma(2.0, size=(40, lbp.FEATURES)), rows[:10] * 3])
    with torch.no_grad():
        ours = net.score(net.project(torch.from_numpy(test).float()[:, :, None, None]))
    projected = pca.transform(scaler.transform(test))
    if svm is None:
        expected = (projected**2).sum(1)
    else:
        expected = -svm.decision_function(projected)
    np.testing.assert_allclose(ours.ravel().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_identical_training_patches_are_refused():
    with pytest.raises(ConfigError, match="all alike"):
        lbp.fit_scorer(np.ones((50, lbp.FEATURES)), 32, 8, "ocsvm", seed=0)


def test_patch_features_are_centred_on_their_cells_and_the_map_has_the_input_size():
    net = lbp.LbpNet(patch=32, stride=8)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = net.features(x)
        out = net(x)
    assert features.shape == (2, lbp.FEATURES, 8, 8)
    # each histogram sums to 1, the spreads are non-negative
    torch.testing.assert_close(features[:, : lbp.BINS].sum(1), torch.ones(2, 8, 8))
    assert (features[:, lbp.BINS + 1] >= 0).all() and (features[:, lbp.BINS + 3] >= 0).all()
    assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all()
    # a dark square in one corner changes the features of that corner's cells only
    y = x.clone()
    y[:, :, :8, :8] = 0
    with torch.no_grad():
        moved = (net.features(y) - features).abs().amax((0, 1))
    assert moved[0, 0] > 0 and moved[-1, -1] == 0 and moved[:, -2:].abs().max() == 0
    whole = lbp.LbpNet(patch=None)
    with torch.no_grad():
        assert whole.features(x).shape == (2, lbp.FEATURES, 1, 1)


def test_sampling_is_bounded_uniform_and_seeded():
    net = lbp.LbpNet(patch=16, stride=16)
    batches = [
        torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(5)
    ]
    everything = torch.cat(
        [net.features(b).permute(0, 2, 3, 1).reshape(-1, lbp.FEATURES) for b in batches]
    )
    rows, seen = lbp.sample_features(net, batches, 30, seed=1)
    assert seen == 5 * 2 * 16 and rows.shape == (30, lbp.FEATURES)
    assert len({tuple(r) for r in np.round(rows, 5)}) == 30  # drawn without replacement
    pool = {tuple(r) for r in np.round(everything.double().numpy(), 5)}
    assert all(tuple(r) in pool for r in np.round(rows, 5))
    again, _ = lbp.sample_features(net, batches, 30, seed=1)
    other, _ = lbp.sample_features(net, batches, 30, seed=2)
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)
    small, seen_small = lbp.sample_features(net, batches, 1000, seed=1)
    assert small.shape == (seen_small, lbp.FEATURES) == (160, lbp.FEATURES)


@pytest.mark.datasets
def test_train_predict_a_broken_bottle_scores_above_a_good_one(bottle_lbp: TrainResult):
    metrics = bottle_lbp.metrics
    assert metrics["patch"] == lbp.PATCH and metrics["scorer"] == "ocsvm"
    assert metrics["patches_seen"] == 7 * 32 * 32  # seven images, 256 / 8 cells a side
    assert metrics["patches_fitted"] == min(lbp.MAX_PATCHES, metrics["patches_seen"])
    assert 0 < metrics["support_vectors"] <= metrics["patches_fitted"]
    model = load_model(bottle_lbp.artifact_path, backend="torch")
    assert model.kind == "lbp"
    broken = _dataset("mvtec_bottle") / "test/broken_large/000.png"
    bad = predict(model, broken)
    goods = [predict(model, p) for p in _bottle_paths("test/good", 3)]
    assert bad.image_size == (900, 900)
    assert bad.image_score > max(g.image_score for g in goods)
    assert bad.is_anomalous and bad.regions
    # the map's peak is on the break
    mask = cv2.imread(str(BOTTLE / "ground_truth/broken_large/000_mask.png"), 0)
    mask = cv2.resize(mask, bad.score_map.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    mask = cv2.dilate(mask.astype(np.uint8), np.ones((33, 33), np.uint8)) > 0
    assert mask[np.unravel_index(np.argmax(bad.score_map), mask.shape)]


@pytest.mark.datasets
def test_onnx_export_and_openvino_predict_like_torch(bottle_lbp: TrainResult):
    export_onnx(bottle_lbp.artifact_path)
    torch_model = load_model(bottle_lbp.artifact_path, backend="torch")
    onnx_model = load_model(bottle_lbp.artifact_path, backend="onnx")
    assert onnx_model.backend == "onnx"
    broken = _dataset("mvtec_bottle") / "test/broken_large/000.png"
    a = predict(torch_model, broken)
    b = predict(onnx_model, broken, PredictConfig(batch_size=3))  # the batch is dynamic
    assert np.abs(a.score_map - b.score_map).max() < 0.01
    assert a.image_score == pytest.approx(b.image_score, abs=0.01)
    assert [r.box for r in a.regions] == [r.box for r in b.regions]
    c = predict(load_model(bottle_lbp.artifact_path, backend="openvino"), broken)
    assert np.abs(a.score_map - c.score_map).max() < 0.01


@pytest.mark.datasets
def test_the_image_level_variant_gives_one_score_per_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``patch=None``: one feature vector per image, a constant map; it trains, calibrates,
    loads from its ``net_args`` and exports like the patch-wise model."""
    spec = models.get("lbp")
    image_level = functools.partial(lbp.fit_lbp, patch=None)
    monkeypatch.setitem(models.MODELS, "lbp", dataclasses.replace(spec, fit=image_level))
    result = train(
        TrainConfig(model="lbp", input_size=256), _bottle_paths("train/good", 14), tmp_path
    )
    assert result.metrics["patch"] is None and result.metrics["patches_seen"] == 12
    export_onnx(result.artifact_path)
    broken = _dataset("mvtec_bottle") / "test/broken_large/000.png"
    for backend in ("torch", "onnx"):
        pred = predict(load_model(result.artifact_path, backend=backend), broken)
        assert np.ptp(pred.score_map) < 1e-5, backend
        assert np.isfinite(pred.image_score)


def test_cancellation_stops_the_feature_pass_and_writes_nothing(
    rgb_normals: list[Path], tmp_path: Path
):
    calls: list[str] = []

    def progress(fraction: float, message: str) -> None:
        calls.append(message)
        if message.startswith("image 1/"):
            raise Cancelled("user pressed cancel")

    with pytest.raises(Cancelled):
        train(TrainConfig(model="lbp", input_size=64), rgb_normals, tmp_path, progress)
    assert calls[-1].startswith("image 1/")
    assert not (tmp_path / "model.pt").exists()


def test_tiled_training_on_synthetic_texture(rgb_normals: list[Path], tmp_path: Path):
    result = train(TrainConfig(model="lbp", input_size=64, scale=1.0), rgb_normals, tmp_path)
    pred = predict(result.artifact_path, rgb_normals[0])
    assert pred.heatmap.shape == (128, 128) and np.isfinite(pred.score_map).all()


def test_the_image_level_variant_judges_whole_images(tmp_path: Path):
    """``TrainConfig(model="lbp_image")``: one feature vector per image; a surface of another
    texture scores above the normal ones, its map is flat, and it is suggested as one region
    over the whole image (nothing smaller to point at)."""
    from .conftest import save, texture

    paths = [save(texture(96, 96, seed), tmp_path / f"n{seed}.png") for seed in range(12)]
    result = train(TrainConfig(model="lbp_image", input_size=96), paths, tmp_path / "m")
    model = load_model(result.artifact_path, backend="torch")
    assert model.kind == "lbp_image" and model.net.patch is None
    normal = predict(model, save(texture(96, 96, 99), tmp_path / "good.png"))
    rng = np.random.default_rng(0)
    other = np.clip(rng.normal(0.5, 0.25, (96, 96, 3)), 0, 1).astype(np.float32)  # grainy
    odd = predict(model, save(other, tmp_path / "odd.png"))
    assert odd.image_score > 0.5 > normal.image_score, (odd.image_score, normal.image_score)
    assert odd.score_map is not None and float(np.ptp(odd.score_map)) < 1e-3 * odd.image_score
    assert [r.box for r in odd.regions] == [[0.0, 0.0, 96.0, 96.0]]
