"""The MVTec AD layout's rules, without the reader and the writer (``mvtec.py``), so that the
anomaly engine (``workers.anomaly.datasets``) follows the same rules without loading the formats
registry and every format's dependencies (SAHI, shapely, YAML).

Image files: any suffix in ``IMAGE_SUFFIXES``, in any case; dot files are not images. A defect
image's mask is ``ground_truth/<type>/<stem>_mask.<ext>`` or ``<stem>.<ext>``, found by the image's
exact stem, never by sorted order; two candidates for one image, or one mask named by two images,
is ambiguous and never guessed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ._files import IMAGE_SUFFIXES, is_hidden, is_image_file
from .model import FormatError

__all__ = [
    "GOOD",
    "GROUND_TRUTH",
    "IMAGE_SUFFIXES",
    "MASK_SUFFIX",
    "TEST",
    "TRAIN",
    "MaskMatch",
    "MvtecLayoutError",
    "is_mvtec_root",
    "list_images",
    "mask_candidates",
    "mask_file_name",
    "match_masks",
    "type_dirs",
]

TRAIN, TEST, GROUND_TRUTH = "train", "test", "ground_truth"
GOOD = "good"
MASK_SUFFIX = "_mask"  # <stem>_mask.<ext>; a bare <stem>.<ext> is accepted on reading
MASK_WRITE_SUFFIX = ".png"


class MvtecLayoutError(FormatError):
    """The folder is not in MVTec AD layout at all."""


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; ``[]`` when it is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def type_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """The folders ``test/<type>`` (``good`` among them), sorted by name."""
    test = Path(root) / TEST
    if not test.is_dir():
        return []
    return sorted(p for p in test.iterdir() if p.is_dir() and not is_hidden(p))


def is_mvtec_root(root: str | os.PathLike[str]) -> bool:
    """True when ``root`` has ``train/good`` or ``test/``."""
    root = Path(root)
    return (root / TRAIN / GOOD).is_dir() or (root / TEST).is_dir()


def mask_file_name(image_name: str) -> str:
    """The mask file name the writer gives an image: ``<stem>_mask.png``."""
    return f"{PurePosixPath(image_name).stem}{MASK_SUFFIX}{MASK_WRITE_SUFFIX}"


def _masks_by_stem(mask_dir: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for path in list_images(mask_dir):
        out.setdefault(path.stem, []).append(path)
    return out


def _candidates(index: dict[str, list[Path]], stem: str) -> list[Path]:
    return [*index.get(f"{stem}{MASK_SUFFIX}", []), *index.get(stem, [])]


def mask_candidates(mask_dir: str | os.PathLike[str], stem: str) -> list[Path]:
    """Every mask in ``mask_dir`` named for the image with ``stem``: ``<stem>_mask.<ext>`` first,
    then ``<stem>.<ext>`` (any image suffix, any case). One is a match; more is ambiguous."""
    return _candidates(_masks_by_stem(Path(mask_dir)), stem)


@dataclass
class MaskMatch:
    """Images of one ``test/<type>`` folder matched with the masks of ``ground_truth/<type>``."""

    masks: dict[Path, Path] = field(default_factory=dict)  # image -> its one mask
    missing: list[Path] = field(default_factory=list)  # images no mask is named for
    ambiguous: dict[Path, list[Path]] = field(default_factory=dict)  # image -> its candidates
    shared: dict[Path, list[Path]] = field(default_factory=dict)  # mask -> images naming it
    unused: list[Path] = field(default_factory=list)  # masks no image names


def match_masks(images: Iterable[Path], mask_dir: str | os.PathLike[str]) -> MaskMatch:
    """Pair each image with its own mask by stem (``mask_candidates``); never by order.

    A mask named by two images (``a.png``'s ``a_mask.png`` is also image ``a_mask.png``'s
    ``<stem>.png``) is given to none of them: it is in ``shared``.
    """
    index = _masks_by_stem(Path(mask_dir))
    out = MaskMatch()
    found_by_image = {image: _candidates(index, image.stem) for image in images}
    claims: dict[Path, list[Path]] = {}
    for image, found in found_by_image.items():
        for mask in found:
            claims.setdefault(mask, []).append(image)
    for image, found in found_by_image.items():
        if not found:
            out.missing.append(image)
        elif len(found) > 1:
            out.ambiguous[image] = found
        elif len(claims[found[0]]) == 1:
            out.masks[image] = found[0]
    out.shared = {mask: named for mask, named in claims.items() if len(named) > 1}
    out.unused = sorted(m for paths in index.values() for m in paths if m not in claims)
    return out
