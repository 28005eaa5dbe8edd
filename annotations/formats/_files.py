"""File helpers shared by the format modules (pure: Pillow and the standard library)."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def image_size(path: Path) -> tuple[int, int] | str:
    """``(width, height)`` from the file header, or a plain-words reason it cannot be read.

    Only the header is parsed (Pillow opens lazily), so this is cheap even for large images.
    """
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        return "the image file is missing"
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"the file is not a readable image ({exc.__class__.__name__})"
    except Image.DecompressionBombError:
        return "the image is too large to open safely (decompression bomb limit)"


def place_file(src: Path, dst: Path) -> None:
    """Put a byte copy of ``src`` at ``dst`` (a copy, not a link: exports must not share inodes
    with stored originals that someone might edit in place)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
