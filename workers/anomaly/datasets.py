"""Reading MVTec-AD-style folders, pairing every defective image with ITS mask by name.

anomalib's ``Folder`` datamodule pairs images and masks by sorted order and only checks that one
name contains the other. With ``<stem>_mask.png`` masks the two sort orders can differ
(``a.png`` < ``a_b.png`` but ``a_b_mask.png`` < ``a_mask.png``), and the wrong mask is paired
silently. Here a mask is found by its exact stem, and anything ambiguous is an error.

The layout rules themselves (image suffixes, mask names, folder names) have one owner,
``annotations.formats.mvtec_layout``, which the importer and the exporter use too; this module turns
what does not fit them into ``ConfigError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from annotations.formats import mvtec_layout as layout

from .errors import ConfigError

IMAGE_EXTS = tuple(sorted(layout.IMAGE_SUFFIXES))


@dataclass(frozen=True)
class Sample:
    """One test image: its path, its mask (None for good images) and its defect type.
    ``outline_only``: the mask outlines the defects (boxes drawn around them) rather than
    marking their pixels; image and region figures use it, pixel AUROC and AU-PRO leave the
    image out (a box's background would count as defect)."""

    image: Path
    mask: Path | None
    defect_type: str
    outline_only: bool = False

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != layout.GOOD


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (suffix in any case; no dot files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"not a folder: {folder}")
    return layout.list_images(folder)


def _no_mask(image: Path, mask_dir: Path) -> ConfigError:
    expected = layout.mask_file_name(image.name)
    return ConfigError(f"no mask for {image} in {mask_dir} (expected {expected})")


def _ambiguous(image: Path, found: list[Path]) -> ConfigError:
    return ConfigError(f"ambiguous masks for {image}: {[str(f) for f in found]}")


def find_mask(image: Path, mask_dir: Path) -> Path:
    """The mask of ``image`` in ``mask_dir``: ``<stem>_mask.<ext>`` or ``<stem>.<ext>``."""
    found = layout.mask_candidates(mask_dir, image.stem)
    if not found:
        raise _no_mask(image, mask_dir)
    if len(found) > 1:
        raise _ambiguous(image, found)
    return found[0]


def pair_masks(images: list[Path], mask_dir: Path) -> list[tuple[Path, Path]]:
    """Pair each image with its own mask by stem; every mask must be used exactly once."""
    match = layout.match_masks(images, mask_dir)
    for image in images:
        if image in match.missing:
            raise _no_mask(image, mask_dir)
        if image in match.ambiguous:
            raise _ambiguous(image, match.ambiguous[image])
    if match.shared:
        raise ConfigError(f"two images share one mask in {mask_dir}")
    return [(img, match.masks[img]) for img in images]


def mvtec_train(root: str | Path) -> list[Path]:
    """Defect-free training images: ``<root>/train/good``."""
    return list_images(Path(root) / layout.TRAIN / layout.GOOD)


def mvtec_test(root: str | Path) -> list[Sample]:
    """Test samples: ``test/good`` (no mask) and ``test/<type>`` paired with
    ``ground_truth/<type>/<stem>_mask.png``."""
    root = Path(root)
    if not (root / layout.TEST).is_dir():
        raise ConfigError(f"not a folder: {root / layout.TEST}")
    samples: list[Sample] = []
    for type_dir in layout.type_dirs(root):
        images = list_images(type_dir)
        if type_dir.name == layout.GOOD:
            samples += [Sample(img, None, layout.GOOD) for img in images]
            continue
        for img, mask in pair_masks(images, root / layout.GROUND_TRUTH / type_dir.name):
            samples.append(Sample(img, mask, type_dir.name))
    return samples
