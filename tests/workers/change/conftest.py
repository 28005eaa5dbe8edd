"""Synthetic pairs and the Lite0 change encoder for the change-detection tests.

A "board" is a light background with dark pads, traces and holes at random places, slightly
blurred, plus sensor noise: enough structure in two directions for features and ECC, like a
PCB or a machined part seen from above. A defect is a painted disc.
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
def _one_thread() -> None:
    # Two threads on a shared 2-core machine spin against each other; one is plenty here.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def board(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 grey board: pads, traces and holes on a light background."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width), 215, np.uint8)
    for _ in range(height * width // 2500):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        kind = rng.integers(0, 3)
        if kind == 0:
            w, h = (int(v) for v in rng.integers(6, 30, 2))
            cv2.rectangle(img, (x, y), (x + w, y + h), int(rng.integers(20, 90)), -1)
        elif kind == 1:
            x2, y2 = x + int(rng.integers(-60, 60)), y + int(rng.integers(-60, 60))
            cv2.line(img, (x, y), (x2, y2), int(rng.integers(20, 90)), int(rng.integers(2, 6)))
        else:
            cv2.circle(img, (x, y), int(rng.integers(3, 12)), int(rng.integers(20, 90)), -1)
    return cv2.GaussianBlur(img, (0, 0), 0.8)


def noisy(img: np.ndarray, seed: int, sigma: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def paint_defect(img: np.ndarray, cx: int, cy: int, radius: int, value: int = 0) -> np.ndarray:
    out = img.copy()
    cv2.circle(out, (cx, cy), radius, value, -1)
    return out


@pytest.fixture(scope="session")
def encoder():
    from workers.change import ChangeEncoder

    return ChangeEncoder()
