"""Reading MVTec-AD-style folders, pairing every defective image with ITS mask by name.

anomalib's ``Folder`` datamodule pairs images and masks by sorted order and only checks that one
name contains the other. With ``<stem>_mask.png`` masks the two sort orders can differ
(``a.png`` < ``a_b.png`` but ``a_b_mask.png`` < ``a_mask.png``), and the wrong mask is paired
silently. Here a mask is found by its exact stem, and anything ambiguous is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One test image: its path, its mask (None for good images) and its defect type."""

    image: Path
    mask: Path | None
    defect_type: str

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != "good"


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def find_mask(image: Path, mask_dir: Path) -> Path:
    """The mask of ``image`` in ``mask_dir``: ``<stem>_mask.<ext>`` or ``<stem>.<ext>``."""
    candidates = [
        mask_dir / f"{image.stem}{suffix}{ext}" for suffix in ("_mask", "") for ext in IMAGE_EXTS
    ]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise ConfigError(f"no mask for {image} in {mask_dir} (expected {image.stem}_mask.png)")
    if len(found) > 1:
        raise ConfigError(f"ambiguous masks for {image}: {[str(f) for f in found]}")
    return found[0]


def pair_masks(images: list[Path], mask_dir: Path) -> list[tuple[Path, Path]]:
    """Pair each image with its own mask by stem; every mask must be used exactly once."""
    pairs = [(img, find_mask(img, mask_dir)) for img in images]
    used = {m for _, m in pairs}
    if len(used) != len(pairs):
        raise ConfigError(f"two images share one mask in {mask_dir}")
    return pairs


def mvtec_train(root: str | Path) -> list[Path]:
    """Defect-free training images: ``<root>/train/good``."""
    return list_images(Path(root) / "train" / "good")


def mvtec_test(root: str | Path) -> list[Sample]:
    """Test samples: ``test/good`` (no mask) and ``test/<type>`` paired with
    ``ground_truth/<type>/<stem>_mask.png``."""
    root = Path(root)
    samples: list[Sample] = []
    for type_dir in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        images = list_images(type_dir)
        if type_dir.name == "good":
            samples += [Sample(img, None, "good") for img in images]
            continue
        for img, mask in pair_masks(images, root / "ground_truth" / type_dir.name):
            samples.append(Sample(img, mask, type_dir.name))
    return samples
