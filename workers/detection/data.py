"""COCO loading, PP-YOLOE training augmentations and the multi-scale batch collate."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from .errors import DetectionDataError

# Paddle's BatchRandomResize with random_interp draws from these cv2 interpolations.
INTERPS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)

# COCO image fields naming an image's reference (its golden sample or "before" image, aligned to
# it): Loupe's own extension first, then DeepPCB's name for its defect-free templates.
REFERENCE_FIELDS = ("reference_file_name", "template_file_name")


def reference_file_name(image: dict[str, Any]) -> str | None:
    """The reference file named by a COCO image entry (:data:`REFERENCE_FIELDS`), or None."""
    for key in REFERENCE_FIELDS:
        value = image.get(key)
        if value:
            return str(value)
    return None


@dataclass
class Category:
    """A COCO category; ``index`` is the contiguous class index used by the network."""

    id: int
    name: str
    index: int


@dataclass
class Sample:
    """One image with its boxes (x1y1x2y2 pixels) and contiguous labels."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    boxes: np.ndarray  # [n, 4] float32
    labels: np.ndarray  # [n] int64
    image_id: int
    file_name: str
    reference: np.ndarray | None = None  # H x W x 3 uint8 RGB, aligned to image (Siamese)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as H x W x 3 uint8 RGB (grey and RGBA are converted)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DetectionDataError(f"cannot read image {path}: {exc}") from exc


def read_coco_categories(data: dict[str, Any]) -> list[Category]:
    """Categories sorted by id, indexed 0..C-1."""
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    if not cats:
        raise DetectionDataError("COCO file has no categories")
    return [Category(id=int(c["id"]), name=str(c["name"]), index=i) for i, c in enumerate(cats)]


class CocoDetectionDataset:
    """Images and boxes from a COCO JSON file; images are read lazily from ``image_root``.

    With ``references=True`` every sample also carries its reference image (for a Siamese
    detector): the file named by the image's ``reference_file_name`` (or DeepPCB's
    ``template_file_name``), relative to ``reference_root`` (default: ``image_root``). An image
    without one is a :class:`DetectionDataError` naming it, raised here, before any training.
    With ``references="optional"`` the images that name one carry it and the others carry none
    (:func:`swap_defects` for a single-image detector).
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path | None = None,
        image_filter: Any | None = None,
        categories: list[Category] | None = None,
        *,
        references: bool = False,
        reference_root: str | Path | None = None,
    ) -> None:
        ann_file = Path(ann_file)
        try:
            data = json.loads(ann_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DetectionDataError(f"cannot read COCO file {ann_file}: {exc}") from exc
        self.image_root = Path(image_root) if image_root is not None else ann_file.parent
        self.categories = categories or read_coco_categories(data)
        self._cat_index = {c.id: c.index for c in self.categories}
        anns_by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data.get("annotations", []):
            if ann.get("iscrowd", 0):
                continue
            anns_by_image.setdefault(int(ann["image_id"]), []).append(ann)
        self.images = [
            img for img in data.get("images", []) if image_filter is None or image_filter(img)
        ]
        self._anns = anns_by_image
        self.coco = data
        self.references = references
        self.reference_root = (
            Path(reference_root) if reference_root is not None else self.image_root
        )
        if references is True:
            missing = [str(img["file_name"]) for img in self.images if not reference_file_name(img)]
            if missing:
                shown = ", ".join(missing[:5]) + (
                    f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                )
                raise DetectionDataError(
                    f"{len(missing)} of {len(self.images)} images in {ann_file} have no reference "
                    f"image (COCO image field 'reference_file_name'), which a Siamese detector "
                    f"needs: {shown}"
                )

    def __len__(self) -> int:
        return len(self.images)

    def targets(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (x1y1x2y2) and contiguous labels of image ``idx``."""
        img = self.images[idx]
        boxes, labels = [], []
        for ann in self._anns.get(int(img["id"]), []):
            if ann["category_id"] not in self._cat_index:
                continue
            x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self._cat_index[ann["category_id"]])
        return (
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64),
        )

    def reference_path(self, idx: int) -> Path | None:
        """Path of image ``idx``'s reference, or None when its COCO entry names none."""
        name = reference_file_name(self.images[idx])
        return None if name is None else self.reference_root / name

    def load_reference(self, idx: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The reference of image ``idx`` (RGB uint8); with ``shape``, it must be that size."""
        file_name = self.images[idx]["file_name"]
        path = self.reference_path(idx)
        if path is None:
            raise DetectionDataError(f"image {file_name} has no reference image")
        try:
            reference = load_image(path)
        except DetectionDataError as exc:
            raise DetectionDataError(f"reference of image {file_name}: {exc}") from exc
        if shape is not None and reference.shape[:2] != tuple(shape[:2]):
            raise DetectionDataError(
                f"reference {path.name} of image {file_name} is {reference.shape[1]}x"
                f"{reference.shape[0]} px, the image {shape[1]}x{shape[0]}: a reference must "
                "be aligned to its image, at the same size"
            )
        return reference

    def __getitem__(self, idx: int) -> Sample:
        img = self.images[idx]
        boxes, labels = self.targets(idx)
        image = load_image(self.image_root / img["file_name"])
        return Sample(
            image=image,
            boxes=boxes,
            labels=labels,
            image_id=int(img["id"]),
            file_name=str(img["file_name"]),
            reference=(
                self.load_reference(idx, image.shape)
                if self.references is True
                or (self.references == "optional" and self.reference_path(idx) is not None)
                else None
            ),
        )


def random_distort(image: np.ndarray, rng: random.Random) -> np.ndarray:
    """Paddle's RandomDistort: hue +-18 deg, saturation/contrast/brightness x[0.5, 1.5],
    each applied with probability 0.5, in random order."""
    img = image.astype(np.float32)

    def brightness(x: np.ndarray) -> np.ndarray:
        return x * rng.uniform(0.5, 1.5)

    def contrast(x: np.ndarray) -> np.ndarray:
        gray_mean = (x @ np.array([0.299, 0.587, 0.114], np.float32)).mean()
        return (x - gray_mean) * rng.uniform(0.5, 1.5) + gray_mean

    def saturation(x: np.ndarray) -> np.ndarray:
        gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        return (x - gray) * rng.uniform(0.5, 1.5) + gray

    def hue(x: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        shift = int(round(rng.uniform(-18, 18) / 2))  # OpenCV hue is 0..179
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + shift) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)

    ops = [brightness, contrast, saturation, hue]
    rng.shuffle(ops)
    for op in ops:
        if rng.random() < 0.5:
            img = op(img)
    return np.clip(img, 0, 255).astype(np.uint8)


def random_distort_pair(
    image: np.ndarray, reference: np.ndarray, rng: random.Random, jitter: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`random_distort` with the same draws on an image and its reference, then the
    reference's brightness and contrast moved a little more (up to ``jitter``): a golden sample
    photographed on another day is lit almost, not exactly, alike."""
    state = rng.getstate()
    image = random_distort(image, rng)
    twin = random.Random()
    twin.setstate(state)
    reference = random_distort(reference, twin).astype(np.float32)
    mean = reference.mean()
    gain, contrast = rng.uniform(1 - jitter, 1 + jitter), rng.uniform(1 - jitter, 1 + jitter)
    reference = ((reference - mean) * contrast + mean) * gain
    return image, np.clip(reference, 0, 255).astype(np.uint8)


def random_flip(sample: Sample, rng: random.Random, prob: float = 0.5) -> Sample:
    """Horizontal flip of image and boxes (and of the reference, with the image)."""
    if rng.random() >= prob:
        return sample
    w = sample.image.shape[1]
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = w - sample.boxes[:, [2, 0]]
    return Sample(
        np.ascontiguousarray(sample.image[:, ::-1]),
        boxes,
        sample.labels,
        sample.image_id,
        sample.file_name,
        None if sample.reference is None else np.ascontiguousarray(sample.reference[:, ::-1]),
    )


def random_turn(sample: Sample, rng: random.Random) -> Sample:
    """A random quarter turn (0-3) and a vertical flip half the time, of image, boxes and
    reference alike: all eight orientations of a part that has no "up" (a PCB, a steel strip,
    a tile: its defects look the same turned)."""
    turns, flip = rng.randrange(4), rng.random() < 0.5
    if not turns and not flip:
        return sample
    image, boxes, reference = sample.image, sample.boxes.copy(), sample.reference
    if flip:
        h = image.shape[0]
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
        image = image[::-1]
        reference = None if reference is None else reference[::-1]
    for _ in range(turns):  # a quarter turn anticlockwise: (x, y) -> (y, w - x)
        w = image.shape[1]
        boxes = np.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], axis=1)
        image = np.rot90(image)
        reference = None if reference is None else np.rot90(reference)
    return Sample(
        np.ascontiguousarray(image),
        boxes.astype(np.float32),
        sample.labels,
        sample.image_id,
        sample.file_name,
        None if reference is None else np.ascontiguousarray(reference),
    )


def swap_defects(
    sample: Sample, rng: random.Random, prob: float, margin: int = 4, keep_reference: bool = False
) -> Sample:
    """With probability ``prob``, and only where the sample has an aligned reference (a golden
    sample, DeepPCB's template), put back the reference's pixels over a random half of the
    boxes (each grown by ``margin`` px) and drop those boxes: the same part with fewer defects,
    where the detector learns that the defect, not the place, makes the box. A box that a
    swapped area covers in part is swapped too, so no box is left over a half-erased defect.
    The reference is dropped from the sample unless ``keep_reference`` (a Siamese detector's
    pair)."""
    reference = sample.reference
    out_reference = reference if keep_reference else None
    if reference is None or not len(sample.boxes) or rng.random() >= prob:
        if out_reference is sample.reference:
            return sample
        return Sample(
            sample.image, sample.boxes, sample.labels, sample.image_id, sample.file_name, None
        )
    h, w = sample.image.shape[:2]
    grown = np.round(sample.boxes + np.array([-margin, -margin, margin, margin])).astype(int)
    grown = np.clip(grown, 0, [w, h, w, h])
    swap = np.array([rng.random() < 0.5 for _ in range(len(grown))])
    while True:  # a box that overlaps a swapped area is swapped too
        mask = np.zeros((h, w), bool)
        for x1, y1, x2, y2 in grown[swap]:
            mask[y1:y2, x1:x2] = True
        touched = np.array([mask[y1:y2, x1:x2].any() for x1, y1, x2, y2 in grown]) & ~swap
        if not touched.any():
            break
        swap |= touched
    if not swap.any():
        return Sample(
            sample.image, sample.boxes, sample.labels, sample.image_id, sample.file_name,
            out_reference,
        )  # fmt: skip
    image = sample.image.copy()
    image[mask] = reference[mask]
    return Sample(
        image,
        sample.boxes[~swap],
        sample.labels[~swap],
        sample.image_id,
        sample.file_name,
        out_reference,
    )


def _turn_patch(
    arrays: list[np.ndarray], box: np.ndarray, k: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Patches turned a quarter ``k % 4`` times (counter-clockwise) and mirrored when ``k >= 4``,
    with ``box`` (x1y1x2y2 in the patch) turned the same way."""
    x1, y1, x2, y2 = (float(v) for v in box)
    for _ in range(k % 4):
        w = arrays[0].shape[1]
        arrays = [np.rot90(a) for a in arrays]
        x1, y1, x2, y2 = y1, w - x2, y2, w - x1
    if k >= 4:
        w = arrays[0].shape[1]
        arrays = [a[:, ::-1] for a in arrays]
        x1, x2 = w - x2, w - x1
    return [np.ascontiguousarray(a) for a in arrays], np.array([x1, y1, x2, y2], np.float32)


def transplant_defects(
    sample: Sample,
    rng: random.Random,
    prob: float,
    count: int = 3,
    tries: int = 6,
    margin: int = 6,
    tolerance: float = 0.02,
    changed: int = 64,
) -> Sample:
    """With probability ``prob``, and only where the sample has an aligned reference, copy up
    to ``count`` of its defects to other places of the same image where the reference shows
    the same pattern: the same defect on another stretch of the part, with its box.

    A defect's pixels are those where image and reference differ by more than ``changed``
    levels in any colour channel inside its box (dilated by one pixel). Its place is its box grown by
    ``margin``, turned and mirrored at random (one of eight orientations); a new place is one
    whose reference patch differs from the source's turned reference patch by at most
    ``tolerance`` (mean squared difference on a 0..1 grey scale: the share of pixels that
    differ, on a binarised scan), away from every box and from the defects already copied.
    Only the defect's pixels are copied, so the new place keeps its own surroundings. A defect
    whose place overlaps another box is not copied (the other one's pixels would come along
    without a box). At most ``tries`` defects are tried. The reference is kept: the caller
    decides.
    """
    reference = sample.reference
    if reference is None or not len(sample.boxes) or count < 1 or rng.random() >= prob:
        return sample
    h, w = sample.image.shape[:2]
    ref_unit = reference.astype(np.float32).mean(axis=2) / 255.0
    grown = np.round(sample.boxes + np.array([-margin, -margin, margin, margin])).astype(int)
    grown = np.clip(grown, 0, [w, h, w, h])
    taken = np.zeros((h, w), np.uint8)
    for x1, y1, x2, y2 in grown:
        taken[y1:y2, x1:x2] = 1
    occupied = np.zeros((h + 1, w + 1), np.int64)  # summed-area table of the taken places
    occupied[1:, 1:] = taken.cumsum(0).cumsum(1)
    image = sample.image
    boxes, labels = [sample.boxes], [sample.labels]
    order = list(range(len(grown)))
    rng.shuffle(order)
    placed = 0
    for i in order[:tries]:
        if placed >= count:
            break
        x1, y1, x2, y2 = grown[i]
        if x2 - x1 < 4 or y2 - y1 < 4:
            continue
        others = np.delete(grown, i, axis=0)
        if (
            len(others)
            and (
                (others[:, 0] < x2)
                & (others[:, 2] > x1)
                & (others[:, 1] < y2)
                & (others[:, 3] > y1)
            ).any()
        ):
            continue
        box = sample.boxes[i] - np.array([x1, y1, x1, y1], np.float32)
        bx1, by1, bx2, by2 = np.round(box).astype(int)
        patch = sample.image[y1:y2, x1:x2].astype(np.int16)
        diff = np.abs(patch - reference[y1:y2, x1:x2]).max(axis=2) > changed
        inside = np.zeros_like(diff)
        inside[max(by1, 0) : by2, max(bx1, 0) : bx2] = True
        defect = cv2.dilate((diff & inside).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        if not defect.any():
            continue
        (pattern, pixels, defect), box = _turn_patch(
            [ref_unit[y1:y2, x1:x2], sample.image[y1:y2, x1:x2], defect], box, rng.randrange(8)
        )
        ph, pw = pattern.shape
        if pw >= w or ph >= h:
            continue
        score = cv2.matchTemplate(ref_unit, pattern, cv2.TM_SQDIFF) / (pw * ph)
        sh, sw = score.shape  # top-left corners (y, x) of every place of this size
        busy = (
            occupied[ph : ph + sh, pw : pw + sw]
            - occupied[:sh, pw : pw + sw]
            - occupied[ph : ph + sh, :sw]
            + occupied[:sh, :sw]
        )
        ys, xs = np.nonzero((score <= tolerance) & (busy == 0))
        if not len(ys):
            continue
        j = rng.randrange(len(ys))
        ty, tx = int(ys[j]), int(xs[j])
        if image is sample.image:
            image = sample.image.copy()
        image[ty : ty + ph, tx : tx + pw][defect] = pixels[defect]
        boxes.append((box + np.array([tx, ty, tx, ty], np.float32))[None])
        labels.append(sample.labels[i : i + 1])
        taken[ty : ty + ph, tx : tx + pw] = 1
        occupied[1:, 1:] = taken.cumsum(0).cumsum(1)
        placed += 1
    if image is sample.image:
        return sample
    return Sample(
        image,
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(labels),
        sample.image_id,
        sample.file_name,
        reference,
    )


def random_crop(
    sample: Sample,
    size: int,
    rng: random.Random,
    object_prob: float = 0.8,
    min_visible: float = 0.5,
) -> Sample:
    """On-the-fly sliced training for large images: a ``size`` x ``size`` window (smaller sides
    are kept whole), centred on a random object with probability ``object_prob``.

    Boxes are clipped to the window; boxes with less than ``min_visible`` of their area inside
    are dropped, as the datasets exporter does for sliced tiles. The reference, if any, is cut
    at the same window.
    """
    h, w = sample.image.shape[:2]
    if h <= size and w <= size:
        return sample
    cw, ch = min(size, w), min(size, h)
    if len(sample.boxes) and rng.random() < object_prob:
        b = sample.boxes[rng.randrange(len(sample.boxes))]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        x0 = int(min(max(cx - rng.uniform(0.1, 0.9) * cw, 0), w - cw))
        y0 = int(min(max(cy - rng.uniform(0.1, 0.9) * ch, 0), h - ch))
    else:
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    boxes = sample.boxes - np.array([x0, y0, x0, y0], np.float32)
    clipped = np.clip(boxes, 0, [cw, ch, cw, ch]).astype(np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = visible >= min_visible * np.maximum(area, 1e-6)
    reference = sample.reference
    if reference is not None:
        reference = np.ascontiguousarray(reference[y0 : y0 + ch, x0 : x0 + cw])
    return Sample(
        np.ascontiguousarray(sample.image[y0 : y0 + ch, x0 : x0 + cw]),
        clipped[keep],
        sample.labels[keep],
        sample.image_id,
        sample.file_name,
        reference,
    )


def resize_stretched(image: np.ndarray, size: int, interp: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Resize to size x size ignoring aspect ratio (PaddleDetection's keep_ratio=False)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=interp)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC RGB list -> float [B, 3, H, W] in [0, 1] (no mean/std, as PP-YOLOE+)."""
    arr = np.stack(images).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


@dataclass
class Batch:
    """A padded training batch."""

    images: torch.Tensor  # [B, 3, S, S]
    gt_labels: torch.Tensor  # [B, n, 1]
    gt_bboxes: torch.Tensor  # [B, n, 4]
    pad_gt_mask: torch.Tensor  # [B, n, 1]
    references: torch.Tensor | None = None  # [B, 3, S, S] for a Siamese detector


def collate_train(samples: list[Sample], size: int, rng: random.Random) -> Batch:
    """BatchRandomResize (one size per batch, random interpolation) + PadGT; references, when
    the samples have them, are resized exactly as their images."""
    images, boxes_list, labels_list = [], [], []
    references = [] if samples and samples[0].reference is not None else None
    interp = rng.choice(INTERPS)
    for s in samples:
        h, w = s.image.shape[:2]
        images.append(resize_stretched(s.image, size, interp))
        if references is not None:
            if s.reference is None:
                raise DetectionDataError(f"image {s.file_name} has no reference image")
            references.append(resize_stretched(s.reference, size, interp))
        boxes = s.boxes * np.array([size / w, size / h, size / w, size / h], np.float32)
        boxes = np.clip(boxes, 0, size)
        keep = ((boxes[:, 2] - boxes[:, 0]) > 1e-3) & ((boxes[:, 3] - boxes[:, 1]) > 1e-3)
        boxes_list.append(boxes[keep])
        labels_list.append(s.labels[keep])
    n = max(1, max(len(b) for b in boxes_list))
    bsz = len(samples)
    gt_bboxes = torch.zeros(bsz, n, 4)
    gt_labels = torch.zeros(bsz, n, 1, dtype=torch.long)
    pad = torch.zeros(bsz, n, 1)
    for i, (b, lab) in enumerate(zip(boxes_list, labels_list, strict=True)):
        k = len(b)
        if k:
            gt_bboxes[i, :k] = torch.from_numpy(b)
            gt_labels[i, :k, 0] = torch.from_numpy(lab)
            pad[i, :k] = 1.0
    refs = None if references is None else to_tensor(references)
    return Batch(to_tensor(images), gt_labels, gt_bboxes, pad, refs)
