"""Reading, checking and deriving image files. Pure functions: no Django, no database.

Validation uses Pillow to identify the format and read the header (so a decompression bomb is
refused before a single pixel is decoded), then decodes every pixel once (libvips where it can,
Pillow for BMP) so truncated or corrupt files are refused at upload time, not when someone opens
them. Display derivatives (Deep Zoom pyramid, thumbnail) come from libvips (pyvips), which
streams the image and keeps memory flat on 24 MP and larger images.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyvips
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

logging.getLogger("pyvips").setLevel(logging.WARNING)  # it logs each thread pool at INFO
# libvips' operation cache hands the same image object to a later load of the same file. The
# pyramid's progress handler is connected to such an object; once its Python callback is gone, a
# later evaluation (the thumbnail) calls into freed memory and kills the worker ("ffi.from_handle
# ... garbage collected", seen in CI). Each file is read once per job anyway: no cache.
pyvips.cache_set_max(0)

# Loupe applies its own (configurable) pixel limit before decoding; Pillow's default limit and
# its warnings would otherwise fire first with a less useful message.
PILImage.MAX_IMAGE_PIXELS = None

SUPPORTED_FORMATS = {
    "PNG": "png",
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "TIFF": "tiff",
    "BMP": "bmp",
    "WEBP": "webp",
}
SUPPORTED_TEXT = "PNG, JPEG, TIFF, BMP or WebP"
# libvips has no BMP loader in the pyvips-binary build; Pillow decodes those.
_VIPS_FORMATS = {"png", "jpeg", "tiff", "webp"}


class ImageRejected(ValueError):
    """The file is not an image Loupe can store; the message says why, in plain words."""


class PyramidCancelled(RuntimeError):
    """Raised when a progress callback asked to stop while a pyramid was being written."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    orientation: int


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def probe_image(path: str | os.PathLike, *, max_pixels: int) -> ImageInfo:
    """Check that ``path`` is a complete, supported image within ``max_pixels``; describe it.

    Raises ImageRejected with a reason a person can act on.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise ImageRejected("the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pil = PILImage.open(path)
    except UnidentifiedImageError:
        raise ImageRejected(f"not a supported image: expected {SUPPORTED_TEXT}") from None
    except Exception as exc:  # Pillow raises many types for broken headers
        raise ImageRejected(f"unreadable image header ({exc})") from None
    with pil:
        fmt = SUPPORTED_FORMATS.get(pil.format or "")
        if fmt is None:
            raise ImageRejected(f"unsupported image format {pil.format}: expected {SUPPORTED_TEXT}")
        raw_w, raw_h = pil.size
        if raw_w <= 0 or raw_h <= 0:
            raise ImageRejected("the image has no pixels")
        if raw_w * raw_h > max_pixels:
            raise ImageRejected(
                f"the image is {raw_w}x{raw_h} = {raw_w * raw_h / 1e6:.1f} MP, over the limit of "
                f"{max_pixels / 1e6:.0f} MP (LOUPE_MAX_IMAGE_PIXELS)"
            )
        orientation = 1
        if fmt != "png":  # Pillow decodes a whole PNG to look for eXIf: vips tells below
            try:
                orientation = int(pil.getexif().get(0x0112, 1) or 1)
            except Exception:
                orientation = 1
        pil_mode = pil.mode
        if fmt not in _VIPS_FORMATS:
            try:
                pil.load()
            except Exception as exc:
                raise ImageRejected(f"the image data is corrupt or truncated ({exc})") from None
            channels = len(pil.getbands())
            bit_depth = 16 if pil_mode.startswith("I;16") else 8
    if fmt in _VIPS_FORMATS:
        channels, bit_depth, vips_orientation = _decode_with_vips(path)
        if fmt == "png":
            orientation = vips_orientation
    if orientation not in range(1, 9):
        orientation = 1
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: displayed size swaps
        raw_w, raw_h = raw_h, raw_w
    return ImageInfo(fmt, raw_w, raw_h, channels, bit_depth, orientation)


def _decode_with_vips(path: str | os.PathLike) -> tuple[int, int, int]:
    """Bands, bit depth and EXIF orientation (1 when none) of a fully decoded image."""
    try:
        img = pyvips.Image.new_from_file(str(path), access="sequential", fail=True)
        img.avg()  # decodes every pixel; raises on truncation or corrupt data
    except pyvips.Error as exc:
        reason = " ".join(str(exc).split())
        raise ImageRejected(f"the image data is corrupt or truncated ({reason[:200]})") from None
    depth = {"uchar": 8, "char": 8, "ushort": 16, "short": 16}.get(img.format, 32)
    try:
        orientation = int(img.get("orientation")) if img.get_typeof("orientation") else 1
    except (pyvips.Error, TypeError, ValueError):
        orientation = 1
    return img.bands, depth, orientation


def open_for_display(path: str | os.PathLike) -> pyvips.Image:
    """The image as 8-bit sRGB or grey, EXIF-oriented, alpha flattened: what a viewer shows.

    16-bit images are stretched min..max to 8 bits for display; the original keeps every bit.
    """
    try:
        img = pyvips.Image.new_from_file(str(path), fail=True)
    except pyvips.Error:
        with PILImage.open(path) as pil:
            pil = ImageOps.exif_transpose(pil)
            if pil.mode not in ("L", "RGB", "RGBA", "I;16"):
                pil = pil.convert("RGB")
            if pil.mode == "I;16":
                pil = pil.convert("I")
            import numpy as np

            img = pyvips.Image.new_from_array(np.asarray(pil))
    img = img.autorot()
    if img.hasalpha():
        img = img.flatten(background=255)
    if img.format not in ("uchar", "char"):
        img = img.scaleimage()
    elif img.format == "char":
        img = img.cast("uchar")
    if img.bands == 2:
        img = img.extract_band(0)
    if img.bands > 3:
        img = img.extract_band(0, n=3)
    if img.bands == 3 and img.interpretation not in ("srgb", "rgb"):
        img = img.copy(interpretation="srgb")
    if img.bands == 1:
        img = img.copy(interpretation="b-w")
    return img


def build_pyramid(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tile_size: int = 254,
    quality: int = 90,
    progress: Callable[[float], bool] | None = None,
) -> Path:
    """Write a Deep Zoom pyramid ``out_dir/image.dzi`` + ``out_dir/image_files/``; return the .dzi.

    ``progress(fraction)`` is called as tiles are written; returning False stops the work and
    raises PyramidCancelled.
    """
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    img = open_for_display(src)
    stopped = False
    if progress is not None:
        img.set_progress(True)

        def _on_eval(image: pyvips.Image, state: pyvips.Progress) -> None:
            nonlocal stopped
            if not progress(min(state.percent, 100) / 100.0):
                stopped = True
                image.set_kill(True)

        img.signal_connect("eval", _on_eval)
    try:
        img.dzsave(
            str(out / "image"),
            suffix=f".jpg[Q={quality}]",
            tile_size=tile_size,
            overlap=1,
            depth="onepixel",
            layout="dz",
        )
    except pyvips.Error as exc:
        if stopped:
            raise PyramidCancelled("stopped on request") from None
        raise RuntimeError(
            f"could not write the image pyramid: {' '.join(str(exc).split())}"
        ) from exc
    if stopped:
        raise PyramidCancelled("stopped on request")
    return out / "image.dzi"


def make_thumbnail(src: str | os.PathLike, dest: str | os.PathLike, *, size: int = 256) -> None:
    """A JPEG no larger than size x size, oriented like the viewer shows it."""
    img = open_for_display(src)
    scale = min(size / img.width, size / img.height, 1.0)
    if scale < 1.0:
        img = img.resize(scale)
    img.jpegsave(str(dest), Q=85, strip=True)


def upright_copy(src: str | os.PathLike, orientation: int, workdir: str | os.PathLike) -> Path:
    """``src`` turned upright by its EXIF orientation, every bit kept (the file itself when 1).

    Labels, heatmaps and suggestions use the upright frame; readers that ignore EXIF (OpenCV in
    the ML libraries) get this copy so that their coordinates match.
    """
    if orientation in (0, 1):
        return Path(src)
    dest = Path(workdir) / f"{Path(src).stem}-upright.tif"
    try:
        pyvips.Image.new_from_file(str(src)).autorot().tiffsave(str(dest))
    except pyvips.Error:
        dest = dest.with_suffix(".png")
        with PILImage.open(src) as pil:
            ImageOps.exif_transpose(pil).save(dest)
    return dest
