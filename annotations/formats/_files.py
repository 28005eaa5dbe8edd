"""File helpers shared by the format modules (pure: Pillow and the standard library)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Every image suffix the formats read (compared lower-cased, so ``.PNG`` counts).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# Left in folders by archivers and file browsers, never part of a dataset.
_JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


def is_image_file(path: Path) -> bool:
    """True for a visible regular file whose suffix (any case) is an image suffix."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(path) and path.is_file()


def is_hidden(path: Path) -> bool:
    """Dot files (``.DS_Store``, AppleDouble ``._x.png``, ziputil's ``.flat``) and archiver junk."""
    return path.name.startswith(".") or path.name in _JUNK_NAMES


def find_root(folder: str | os.PathLike[str], *, layout_names: Collection[str] = ()) -> Path:
    """The dataset root inside an unpacked upload.

    When everything visible in ``folder`` sits in one folder (``my_dataset/...``, as zipping a
    folder gives), that folder is the root; otherwise ``folder`` itself is. A single folder whose
    name (any case) is in ``layout_names`` is part of the layout itself (an MVTec zip holding only
    ``train/``), so ``folder`` stays the root. One level only: ``a/b/...`` gives ``a``.
    """
    root = Path(folder)
    entries = [p for p in root.iterdir() if not is_hidden(p)] if root.is_dir() else []
    keep = {name.lower() for name in layout_names}
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name.lower() not in keep:
        return entries[0]
    return root


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
