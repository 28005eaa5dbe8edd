"""Reading images of any depth/layout, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from workers.anomaly import ImageReadError, read_image
from workers.anomaly.image_io import specular_mask

pytestmark = pytest.mark.ml


def test_16bit_grayscale_is_scaled_by_its_range(tmp_path: Path):
    arr = np.full((8, 10), 65535 // 2, np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), arr)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (8, 10, 1) and img.dtype == np.float32
    assert img.max() == pytest.approx(0.5, abs=1e-3)


def test_rgba_becomes_rgb_in_rgb_order(tmp_path: Path):
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 2] = 255  # red in OpenCV's BGR(A) order
    bgra[..., 3] = 128
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (4, 4, 3)
    assert img[0, 0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_unreadable_file_names_the_file(tmp_path: Path, content: bytes):
    bad = tmp_path / "broken.png"
    bad.write_bytes(content)
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_specular_mask_finds_bright_unsaturated_pixels():
    img = np.full((10, 10, 3), 0.5, np.float32)
    img[2:4, 2:4] = 1.0  # white highlight
    img[6:8, 6:8] = [1.0, 0.2, 0.2]  # bright but saturated red: not specular
    mask = specular_mask(img)
    assert mask[2:4, 2:4].all()
    assert mask.sum() == 4
