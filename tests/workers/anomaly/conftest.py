"""Synthetic images and tiny trained models for the anomaly engine tests.

Images are a smooth periodic texture plus noise (what a "normal" surface looks like to a
patch model); a defect is a dark disc. Models train for seconds on 64-128 px tiles.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
DATASETS = Path(os.environ.get("LOUPE_DATASETS", ROOT / ".." / "shared" / "datasets"))


@pytest.fixture(scope="session", autouse=True)
def _one_thread(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Two threads on a shared 2-core machine spin against each other (100x slower); one is
    # plenty for 64-128 px tiles. Model caches go to a temp folder, never to the network.
    torch.set_num_threads(1)
    os.environ.setdefault("LOUPE_MODELS_DIR", str(tmp_path_factory.mktemp("models")))


def texture(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    """A normal surface: stripes + checker at fixed periods, small noise; float in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.5 + 0.15 * np.sin(xx / 3.0) + 0.15 * np.sin(yy / 5.0)
    img = np.repeat(base[:, :, None], channels, axis=2)
    if channels == 3:
        img *= np.array([1.0, 0.9, 0.8], np.float32)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def add_defect(img: np.ndarray, cy: int, cx: int, radius: int) -> np.ndarray:
    out = img.copy()
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    out[disc] = 0.05
    return out


def save(img: np.ndarray, path: Path, bits: int = 8) -> Path:
    """Write float image as 8- or 16-bit PNG (RGB given as RGB)."""
    scale = 255 if bits == 8 else 65535
    dtype = np.uint8 if bits == 8 else np.uint16
    arr = np.round(np.clip(img, 0, 1) * scale).astype(dtype)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3:
        arr = arr[:, :, 0]
    assert cv2.imwrite(str(path), arr)
    return path


def assert_onnx_gives_the_same_map(folder: Path, image: Path) -> None:
    """Export the model in ``folder`` to ONNX and check that it maps ``image`` as torch does
    (8-bit heatmap within 2 levels, image score within 0.01)."""
    from workers.anomaly import export_onnx, load_model, predict

    export_onnx(folder)
    a = predict(load_model(folder, backend="torch"), image)
    b = predict(load_model(folder, backend="onnx"), image)
    assert np.abs(a.heatmap.astype(int) - b.heatmap.astype(int)).max() <= 2
    assert a.image_score == pytest.approx(b.image_score, abs=0.01)


@pytest.fixture(scope="session")
def gray16_normals(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six 16-bit grayscale normal images, 128 x 256."""
    folder = tmp_path_factory.mktemp("gray16")
    return [save(texture(128, 256, i, 1), folder / f"n{i}.png", bits=16) for i in range(6)]


@pytest.fixture(scope="session")
def padim_tiled(gray16_normals: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """PaDiM in tiled mode: 64 px tiles at native scale over 128 x 256 images."""
    from workers.anomaly import TrainConfig, train

    out = tmp_path_factory.mktemp("padim")
    config = TrainConfig(model="padim", input_size=64, scale=1.0, tile_overlap=0.25)
    return train(config, gray16_normals, out)


@pytest.fixture(scope="session")
def rgb_normals(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("rgb")
    return [save(texture(128, 128, 10 + i), folder / f"n{i}.png") for i in range(4)]
