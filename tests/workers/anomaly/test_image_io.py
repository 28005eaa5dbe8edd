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


@pytest.mark.parametrize("bits", [8, 16])
def test_pixels_keep_their_type_and_resize_before_becoming_float(tmp_path: Path, bits: int):
    """The engine reads files in their own pixel type and shrinks them before converting to
    float; the network input is the float path's to within half a grey level."""
    from workers.anomaly.image_io import read_pixels
    from workers.anomaly.tiling import Geometry

    rng = np.random.default_rng(0)
    top = 255 if bits == 8 else 65535
    dtype = np.uint8 if bits == 8 else np.uint16
    arr = rng.integers(0, top + 1, (300, 420, 3)).astype(dtype)
    cv2.imwrite(str(tmp_path / "a.png"), arr)
    pixels = read_pixels(tmp_path / "a.png")
    assert pixels.dtype == dtype and pixels.shape == (300, 420, 3)
    assert np.array_equal(pixels, arr[:, :, ::-1])  # RGB order
    whole = Geometry(input_size=64, scale=None, tile_overlap=0.25)
    fast, slow = whole.prepare(pixels), whole.prepare(read_image(tmp_path / "a.png"))
    assert fast.dtype == np.float32 and fast.shape == slow.shape == (64, 64, 3)
    assert np.abs(fast - slow).max() <= 0.5 / top + 1e-6
    tiled = Geometry(input_size=64, scale=1.0, tile_overlap=0.25)
    assert np.array_equal(tiled.prepare(pixels), tiled.prepare(read_image(tmp_path / "a.png")))


def test_specular_mask_of_8_and_16_bit_pixels_uses_the_8_bit_thresholds():
    rgb8 = np.full((4, 4, 3), 128, np.uint8)
    rgb8[0, 0] = 241  # V 241 > 240, S 0: highlight
    rgb8[1, 1] = 240  # V 240 is not above the threshold
    assert specular_mask(rgb8).sum() == 1 and specular_mask(rgb8)[0, 0]
    rgb16 = rgb8.astype(np.uint16) * 257  # the same image in 16 bits
    assert np.array_equal(specular_mask(rgb16), specular_mask(rgb8))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int16, np.int32])
def test_other_pixel_types_are_read_as_float_in_range_and_resize(tmp_path: Path, dtype, channels):
    """A float TIFF with values outside [0, 1], or an int8/int16/int32 TIFF (which OpenCV can
    neither resize nor, in colour, reorder), reaches the engine as float32 in [0, 1], RGB, and
    makes a network input."""
    from workers.anomaly.image_io import read_pixels
    from workers.anomaly.tiling import Geometry

    values = np.linspace(-2, 3, 120 * 90).reshape(90, 120)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.linspace(info.min, info.max, 120 * 90).reshape(90, 120)
    if channels == 3:  # BGR on disk: blue is the ramp, red the top of the range
        values = np.stack([values, values, np.full_like(values, values.max())], axis=2)
    cv2.imwrite(str(tmp_path / "a.tiff"), values.astype(dtype))
    pixels = read_pixels(tmp_path / "a.tiff")
    assert pixels.dtype == np.float32 and pixels.shape == (90, 120, channels)
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    if channels == 3:
        assert (pixels[..., 0] == 1.0).all() and pixels[..., 2].min() == 0.0  # RGB order
    assert np.array_equal(pixels, read_image(tmp_path / "a.tiff"))
    for geometry in (Geometry(64, None, 0.25), Geometry(64, 0.5, 0.25)):
        prepared = geometry.prepare(pixels)
        assert prepared.dtype == np.float32 and prepared.shape[-1] == 3
        assert -1e-6 <= prepared.min() <= prepared.max() <= 1.0 + 1e-6  # resampling rounds
