"""Image checks and derivatives on real files of every supported kind, and on bad input."""

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image as PILImage

from inspection.imaging import ImageRejected, build_pyramid, make_thumbnail, probe_image
from tests.conftest import image_bytes, jpeg_with_orientation, png_bomb_bytes, tiff16_rgb_bytes

MAX = 100_000_000


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "data", "fmt", "channels", "depth"),
    [
        ("a.png", image_bytes("PNG"), "png", 3, 8),
        ("a.jpg", image_bytes("JPEG"), "jpeg", 3, 8),
        ("a.tif", image_bytes("TIFF", mode="L"), "tiff", 1, 8),
        ("a16.tif", image_bytes("TIFF", mode="I;16"), "tiff", 1, 16),
        ("rgb16.tif", tiff16_rgb_bytes(), "tiff", 3, 16),
        ("a.bmp", image_bytes("BMP"), "bmp", 3, 8),
        ("a.webp", image_bytes("WEBP"), "webp", 3, 8),
        ("g.png", image_bytes("PNG", mode="L"), "png", 1, 8),
    ],
)
def test_supported_formats_are_described(tmp_path, name, data, fmt, channels, depth):
    info = probe_image(write(tmp_path, name, data), max_pixels=MAX)
    assert (info.format, info.channels, info.bit_depth) == (fmt, channels, depth)
    assert info.width > 0 and info.height > 0


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.png", b"", "empty"),
        ("notes.png", b"these are my notes, not a picture\n" * 10, "not a supported image"),
        ("anim.gif", image_bytes("GIF"), "unsupported image format GIF"),
        ("bomb.png", png_bomb_bytes(), "over the limit"),
        ("cut.jpg", image_bytes("JPEG", size=(400, 300))[:1500], "corrupt or truncated"),
        ("cut.png", image_bytes("PNG", size=(400, 300))[:3000], "corrupt or truncated"),
    ],
)
def test_bad_files_are_refused_with_a_reason(tmp_path, name, data, reason):
    with pytest.raises(ImageRejected, match=reason):
        probe_image(write(tmp_path, name, data), max_pixels=MAX)


def test_pixel_limit_is_configurable(tmp_path):
    path = write(tmp_path, "a.png", image_bytes("PNG", size=(100, 100)))
    assert probe_image(path, max_pixels=10_000).width == 100
    with pytest.raises(ImageRejected, match="1 MP|0.0 MP|over the limit"):
        probe_image(path, max_pixels=9_999)


def test_exif_orientation_swaps_the_displayed_size(tmp_path):
    path = write(tmp_path, "rot.jpg", jpeg_with_orientation(size=(60, 30), orientation=6))
    info = probe_image(path, max_pixels=MAX)
    assert (info.width, info.height, info.orientation) == (30, 60, 6)
    thumb = tmp_path / "t.jpg"
    make_thumbnail(path, thumb, size=256)
    with PILImage.open(thumb) as t:
        assert t.size == (30, 60)  # shown upright


def test_png_orientation_is_read_without_pillow_decoding_the_whole_image(tmp_path):
    # Pillow's getexif() decodes a whole PNG to find eXIf (27 ms for a 1080p frame,
    # benchmarks/station.py --storage); the orientation comes from the vips decode that checks
    # the pixels anyway
    image = PILImage.new("RGB", (60, 30), (10, 20, 30))
    exif = PILImage.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.png"
    image.save(path, exif=exif)
    info = probe_image(path, max_pixels=MAX)
    assert (info.format, info.width, info.height, info.orientation) == ("png", 30, 60, 6)
    image.save(tmp_path / "plain.png")
    assert probe_image(tmp_path / "plain.png", max_pixels=MAX).orientation == 1


def test_pyramid_of_a_24mp_image(tmp_path):
    import numpy as np
    import pyvips

    arr = np.random.default_rng(1).integers(0, 255, (4000, 6000, 3), dtype=np.uint8)
    src = tmp_path / "big.jpg"
    pyvips.Image.new_from_array(arr).copy(interpretation="srgb").jpegsave(str(src), Q=80)
    seen = []
    dzi = build_pyramid(
        src, tmp_path / "pyr", tile_size=254, progress=lambda f: seen.append(f) or True
    )
    root = ET.parse(dzi).getroot()
    size = root[0].attrib
    assert (size["Width"], size["Height"]) == ("6000", "4000")
    assert root.attrib["TileSize"] == "254"
    levels = sorted(int(p.name) for p in (tmp_path / "pyr" / "image_files").iterdir() if p.is_dir())
    assert levels[-1] == 13  # ceil(log2(6000)) + 1 levels, down to one pixel
    top = list((tmp_path / "pyr" / "image_files" / "13").iterdir())
    assert len(top) == 24 * 16  # ceil(6000/254) x ceil(4000/254)
    assert seen and max(seen) >= 0.9  # libvips reports the last batch at 99 or 100 %


def test_pyramid_can_be_stopped(tmp_path):
    from inspection.imaging import PyramidCancelled

    src = write(tmp_path, "a.png", image_bytes("PNG", size=(3000, 2000)))
    with pytest.raises(PyramidCancelled):
        build_pyramid(src, tmp_path / "pyr", progress=lambda f: False)


def test_16bit_grey_pyramid_is_stretched_for_display(tmp_path):
    import numpy as np

    arr = np.full((64, 64), 1000, dtype=np.uint16)
    arr[:, 32:] = 3000  # a 12-bit camera: all values far below 65535
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="TIFF")
    src = write(tmp_path, "cam.tif", buf.getvalue())
    thumb = tmp_path / "t.jpg"
    make_thumbnail(src, thumb)
    with PILImage.open(thumb) as t:
        lo, hi = t.convert("L").getextrema()
    assert lo < 20 and hi > 235  # dark and bright halves, not a black square


def test_pyramid_then_thumbnail_of_the_same_file_does_not_crash(tmp_path):
    """Regression: with libvips' operation cache on, the thumbnail re-used the image that the
    pyramid's progress handler was connected to, after that handler was freed, and the worker
    died with 'ffi.from_handle() ... garbage collected'. Run in a child: a crash kills it."""
    import subprocess
    import sys

    script = f"""
import gc, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pathlib import Path
from inspection.imaging import build_pyramid, make_thumbnail
from tests.conftest import image_bytes
d = Path({str(tmp_path)!r})
for i in range(25):
    p = d / f"s{{i}}.png"
    p.write_bytes(image_bytes("PNG", size=(64, 48), seed=i))
    build_pyramid(p, d / f"pyr{{i}}", progress=lambda f: True)
    gc.collect()
    make_thumbnail(p, d / f"t{{i}}.jpg")
print("done")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "done"
