"""Import a folder in MVTec AD layout.

    train/good/*            -> images marked normal (defect-free), split 'train'
    test/<type>/*           -> unlabeled images, split 'test' (test/good too: they are for evaluation)
    ground_truth/<type>/<stem>_mask.png (or <stem>.png)
                            -> polygon annotations of category <type>, source 'ground_truth'

Masks are paired with images by name (never by sorted order), so a mask cannot land on the wrong
image; unpaired masks and defect images without a mask are listed in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from django.db import transaction
from PIL import Image as PILImage

from inspection.models import Image, Project, Role
from inspection.permissions import require_role
from inspection.services.images import FileOutcome, IncomingFile, image_store_one

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


class MvtecLayoutError(ValueError):
    """The folder is not in MVTec AD layout."""


@dataclass
class ImportReport:
    normal: int = 0
    unlabeled: int = 0
    annotations: int = 0
    categories: list[str] = field(default_factory=list)
    duplicates: int = 0
    skipped: list[dict] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def mask_to_polygons(mask: np.ndarray, *, min_area: float = 1.0) -> list[list[list[float]]]:
    """Outer contours of a binary mask as polygons in pixel-corner coordinates."""
    import cv2

    binary = (mask > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        pts = contour.reshape(-1, 2).astype(float)
        if len(pts) < 3 or cv2.contourArea(contour) < min_area:
            # a one- or two-pixel-wide speck: keep it as the box around its pixels
            x0, y0 = (float(v) for v in pts.min(axis=0))
            x1, y1 = (float(v) + 1 for v in pts.max(axis=0))
            polygons.append([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            continue
        # contour points are pixel centres; +0.5 puts them on the pixel grid of the image
        polygons.append([[round(float(x) + 0.5, 1), round(float(y) + 0.5, 1)] for x, y in pts])
    return polygons


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask.png", f"{stem}.png"):
        candidate = gt_dir / name
        if candidate.is_file():
            return candidate
    return None


def mvtec_import(
    *,
    user,
    project: Project,
    root: Path,
    progress: Callable[[float, str], None] | None = None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Import an MVTec AD folder into ``project`` (project admins); return what happened.

    ``report`` (optional) is filled as the import goes, so a caller still knows which images were
    stored when the import stops half-way (cancelled, or an error).
    """
    from annotations.models import Annotation
    from annotations.services import category_get_or_create

    if user is not None:
        require_role(user, project, Role.ADMIN)
    root = Path(root)
    if not (root / "train" / "good").is_dir() and not (root / "test").is_dir():
        raise MvtecLayoutError(
            f"'{root.name}' has neither train/good nor test/: not an MVTec AD folder"
        )
    plan: list[tuple[Path, bool, str, str, str | None]] = []  # path, normal, split, group, type
    for path in _images_in(root / "train" / "good"):
        plan.append((path, True, "train", "train/good", None))
    test_dir = root / "test"
    types = sorted(p.name for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []
    for defect_type in types:
        for path in _images_in(test_dir / defect_type):
            plan.append(
                (
                    path,
                    False,
                    "test",
                    f"test/{defect_type}",
                    None if defect_type == "good" else defect_type,
                )
            )
    report = report if report is not None else ImportReport()
    used_masks: set[Path] = set()
    total = max(len(plan), 1)
    for index, (path, normal, split, group, defect_type) in enumerate(plan):
        if progress:
            progress(index / total, f"{group}/{path.name}")
        rel = path.relative_to(root).as_posix()
        outcome: FileOutcome = image_store_one(
            project=project,
            user=user,
            incoming=IncomingFile(rel, path),
            is_normal=normal,
            split=split,
            source_group=group,
        )
        if outcome.status == "rejected":
            report.skipped.append({"name": rel, "reason": outcome.reason})
            continue
        if outcome.status == "duplicate":
            report.duplicates += 1
            continue
        report.image_ids.append(outcome.image_id)
        if normal:
            report.normal += 1
        else:
            report.unlabeled += 1
        if defect_type is None:
            continue
        mask_path = _find_mask(root / "ground_truth" / defect_type, path.stem)
        if mask_path is None:
            report.skipped.append(
                {
                    "name": f"ground_truth/{defect_type}/{path.stem}_mask.png",
                    "reason": "no ground-truth mask for this defect image",
                }
            )
            continue
        used_masks.add(mask_path.resolve())
        image = Image.objects.get(pk=outcome.image_id)
        try:
            with PILImage.open(mask_path) as m:
                mask = np.asarray(m.convert("L"))
        except Exception as exc:
            report.skipped.append(
                {
                    "name": mask_path.relative_to(root).as_posix(),
                    "reason": f"unreadable mask ({exc})",
                }
            )
            continue
        if mask.shape != (image.height, image.width):
            report.skipped.append(
                {
                    "name": mask_path.relative_to(root).as_posix(),
                    "reason": f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}",
                }
            )
            continue
        category = category_get_or_create(project=project, name=defect_type)
        if defect_type not in report.categories:
            report.categories.append(defect_type)
        with transaction.atomic():
            for polygon in mask_to_polygons(mask):
                Annotation.objects.create(
                    image=image,
                    category=category,
                    kind=Annotation.Kind.POLYGON,
                    geometry={"type": "polygon", "points": polygon},
                    source=Annotation.Source.GROUND_TRUTH,
                )
                report.annotations += 1
    gt_root = root / "ground_truth"
    if gt_root.is_dir():
        for mask in sorted(gt_root.rglob("*")):
            if (
                mask.is_file()
                and mask.resolve() not in used_masks
                and mask.suffix.lower() in IMAGE_SUFFIXES
            ):
                report.skipped.append(
                    {
                        "name": mask.relative_to(root).as_posix(),
                        "reason": "mask without a matching test image",
                    }
                )
    if progress:
        progress(1.0, "done")
    return report
