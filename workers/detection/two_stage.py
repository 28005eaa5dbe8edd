"""A two-stage change detector for aligned pairs: the changed pixels propose, a small network on
crops of (image, reference, difference) names the category and corrects the box (issue #14).

Where an image and its reference are aligned scans of a near-binary pattern (a PCB's copper, a
print, a mask), the pixels that changed find nearly every defect (DeepPCB: 0.988 of the test
defects at IoU 0.5), so what is left to learn is where the annotator drew the frame around it
and what it is. That is learnt from far fewer pixels than a whole detector:

1. proposals: both images binarised (grey level ``binarise``), their XOR opened (``o`` px: JPEG
   and edge noise out) and pieces closer than ``j`` px joined, for each ``(j, o)`` of
   ``settings``; the boxes of changed pixels of all settings pooled (one defect may give several:
   the network says which is the defect);
2. the box: each proposal grown by margins per side fitted on the training set (the median of the
   labelled frames around the proposals inside them), then corrected by the network, then drawn
   towards the frame the labels' habit gives: the changed pixels inside the corrected box (less
   ``snap_inset`` of the margins, which keeps a neighbour's changes out) grown by the category's
   own margins per side (the median of each labelled frame around the changed pixels inside
   it). Each side is the two estimates' mean weighted by the inverse of their variances: the
   network's (``box_sd``) and the category's spread on the labels (DeepPCB: 1-2 px for spurious
   copper and pin-holes, 5-7 px for shorts). The network finds the defect, the pixels say
   exactly where it ends (DeepPCB test mAP 0.66 -> 0.72 with the same network);
3. the category: a CNN of six convolutions on a ``crop`` px window of (image, reference,
   difference) around the grown box (``context`` times its longer side), told how the pattern's
   pieces changed in the box (:func:`topology`: a break, a bridge, a hole), with one output per
   category plus "no defect", four box offsets and the corrected box's expected IoU, which
   weights the score (a well-placed box ranks before a loose one of the same defect). Trained
   with the eight quarter turns and flips (the box on upright crops only: the annotators' margins
   differ per side); at prediction the mean of the eight turns' probabilities (and of
   ``networks`` networks trained from successive seeds, their boxes too). Each proposal
   gives a box for its two likeliest categories; boxes of a category that overlap (IoU >= 0.5)
   are suppressed.

Photographs, whose grey levels change with light, are not for this model: their change run
(``workers.change``) compares features instead. Measured on DeepPCB: docs/benchmarks-detection.md
("A two-stage alternative"), ``benchmarks/change_two_stage.py``.

A plain library: no Django, no Celery. The artifact is one torch file (``FORMAT``);
:func:`workers.detection.load_detector` recognises it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from .data import Category, CocoDetectionDataset, load_image
from .errors import CheckpointError, DetectionDataError, DetectionError, WeightsNotFound
from .inference import Detection
from .trainer import ProgressCallback, TrainResult

FORMAT = "loupe-two-stage-change"
#: 3: several networks (``PairConfig.networks``); 2: the topology numbers
#: (``PairConfig.topology``) and the category margins; 1 and 2 load (one network)
VERSION = 3
#: Most proposals one pair may give (the ones with the most changed pixels are kept): a pair
#: that is not aligned changes everywhere, and its crops would not fit in memory.
MAX_PROPOSALS = 3000
#: Most crops a training keeps in memory (8 kB each: 1.6 GB)
MAX_TRAIN_CROPS = 200_000


@dataclass
class PairConfig:
    """How proposals are made and the network trained (kept in the artifact)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    context: float = 2.0  # crop side / the grown box's longer side
    crop: int = 64  # the network's input side
    settings: tuple[tuple[int, int], ...] = ((1, 2), (7, 2), (1, 3), (7, 3))  # (join, open) px
    min_pixels: int = 12  # fewest changed pixels of a proposal
    binarise: int = 127  # grey level between background and pattern
    upright: float = 0.5  # share of each batch not turned (the box is learnt on those)
    min_steps_per_epoch: int = 20
    categories_per_proposal: int = 2
    #: the network is told how the pattern's pieces changed around each proposal (see
    #: :func:`topology`); artifacts written before it have it off
    topology: bool = True
    dropout: float = 0.3  # of the pooled features, for the categories (with topology only)
    #: the network's box error per side (px; 2.9-3.4 on held-out DeepPCB pairs,
    #: benchmarks/two_stage_boxes.py): each side is the mean of the network's and of the frame
    #: around the changed pixels (:func:`snap`), weighted by the inverse of their variances
    #: (the frame's: its category's spread on the training labels). 0: the network's alone
    box_sd: float = 3.2
    #: how far inside the network's box the changed pixels are looked for (the share of the
    #: category's margins: a neighbour's changes stay out)
    snap_inset: float = 0.6
    #: networks trained one after the other (seeds ``seed``, ``seed + 1``, ...); prediction
    #: averages their probabilities, box offsets and box IoUs (the categories are what the
    #: averaging helps: benchmarks/two_stage_boxes.py --networks)
    networks: int = 1
    num_threads: int | None = None

    #: settings of prediction only: not part of what a checkpoint continues
    PREDICTION_ONLY = ("num_threads", "box_sd", "snap_inset")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["settings"] = [list(s) for s in self.settings]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "settings" in known:
            known["settings"] = tuple(tuple(int(v) for v in s) for s in known["settings"])
        return cls(**known)


def grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def proposals(image: np.ndarray, reference: np.ndarray, config: PairConfig) -> list[tuple]:
    """Boxes ``(x1, y1, x2, y2)`` (pixels, x2/y2 exclusive) of the changed pixels of an aligned
    pair, the settings' pooled, in order of position; beyond :data:`MAX_PROPOSALS` the ones with
    the most changed pixels are kept."""
    changed = _changed(image, reference, config)
    pooled: dict[tuple, int] = {}
    for join, opening in config.settings:
        diff = _opened(changed, opening)
        joined = cv2.dilate(diff, np.ones((join, join), np.uint8)) if join > 1 else diff
        n, labels = cv2.connectedComponents(joined, connectivity=8)
        if n <= 1:
            continue
        # per piece: the box and the count of its changed pixels (not of the joined ones)
        ys, xs = np.nonzero(diff)
        ks = labels[ys, xs]
        counts = np.bincount(ks, minlength=n)
        x1 = np.full(n, np.iinfo(np.int64).max)
        y1 = np.full(n, np.iinfo(np.int64).max)
        x2 = np.full(n, -1)
        y2 = np.full(n, -1)
        np.minimum.at(x1, ks, xs)
        np.minimum.at(y1, ks, ys)
        np.maximum.at(x2, ks, xs)
        np.maximum.at(y2, ks, ys)
        for k in np.nonzero(counts >= config.min_pixels)[0]:
            if k == 0:
                continue
            box = (int(x1[k]), int(y1[k]), int(x2[k]) + 1, int(y2[k]) + 1)
            pooled[box] = max(pooled.get(box, 0), int(counts[k]))
    ranked = sorted(pooled, key=lambda b: (-pooled[b], b))
    return sorted(ranked[:MAX_PROPOSALS])


def _changed(image: np.ndarray, reference: np.ndarray, config: PairConfig) -> np.ndarray:
    """uint8 mask of the pixels on the other side of ``binarise`` in the two images."""
    test, ref = grey(image), grey(reference)
    if test.shape != ref.shape:
        raise DetectionError(
            f"the reference is {ref.shape[1]}x{ref.shape[0]} px, the image "
            f"{test.shape[1]}x{test.shape[0]}: it must be aligned to the image, at its size"
        )
    return ((test > config.binarise) != (ref > config.binarise)).astype(np.uint8)


def changed_pixels(image: np.ndarray, reference: np.ndarray, config: PairConfig) -> np.ndarray:
    """The changed pixels the boxes are drawn to: the mask opened by the settings' smallest
    opening (JPEG and edge noise out, as for the proposals)."""
    return _opened(_changed(image, reference, config), min(o for _, o in config.settings))


def _opened(mask: np.ndarray, size: int) -> np.ndarray:
    """``mask`` opened by a ``size`` px square that leaves what stays in place (OpenCV's
    opening by an even square moves it by a pixel: both steps use the same anchor)."""
    kernel = np.ones((size, size), np.uint8)
    anchor = size - 1 - size // 2
    return cv2.dilate(cv2.erode(mask, kernel), kernel, anchor=(anchor, anchor))


def box_iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grow(box, margins) -> list[float]:
    return [box[0] - margins[0], box[1] - margins[1], box[2] + margins[2], box[3] + margins[3]]


def fit_margins(pairs: list[tuple[list, np.ndarray]]) -> list[float]:
    """Per side (left, top, right, bottom): the median distance from a proposal to the labelled
    frame around it, over proposals inside exactly one frame. ``pairs``: (proposals, boxes)."""
    sides = []
    for props, boxes in pairs:
        for p in props:
            inside = [g for g in boxes if g[0] <= p[0] and g[1] <= p[1] and p[2] <= g[2] and p[3] <= g[3]]  # fmt: skip
            if len(inside) == 1:
                g = inside[0]
                sides.append((p[0] - g[0], p[1] - g[1], g[2] - p[2], g[3] - p[3]))
    if not sides:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(v) for v in np.median(np.array(sides), axis=0)]


def changed_extent(changed: np.ndarray, x1: float, y1: float, x2: float, y2: float):
    """The tight frame (x1, y1, x2, y2) of the changed pixels inside the window (rounded to
    pixels, clipped at the top-left); None when none is there."""
    x1, y1 = max(0, int(round(x1))), max(0, int(round(y1)))
    x2, y2 = int(round(x2)), int(round(y2))
    if x2 <= x1 or y2 <= y1:
        return None
    ys, xs = np.nonzero(changed[y1:y2, x1:x2])
    if len(xs) == 0:
        return None
    return x1 + xs.min(), y1 + ys.min(), x1 + xs.max() + 1, y1 + ys.max() + 1


def frame_sides(changed: np.ndarray, box) -> tuple[float, float, float, float] | None:
    """Per side (left, top, right, bottom): how far the frame ``box`` lies from the changed
    pixels inside it; None when none is."""
    tight = changed_extent(changed, *box[:4])
    if tight is None:
        return None
    return (
        float(tight[0] - box[0]),
        float(tight[1] - box[1]),
        float(box[2] - tight[2]),
        float(box[3] - tight[3]),
    )


#: fewest labelled frames of a category whose spread is trusted
MIN_FRAMES = 5


def fit_category_margins(frames: list[tuple[int, tuple]], num_categories: int, fallback):
    """Per category index, per side, over its labelled frames (``frames``: (category index,
    :func:`frame_sides`)): the median (``fallback`` for a category without any) and the standard
    deviation (None below :data:`MIN_FRAMES` frames: that category's boxes stay the network's).
    Returns (margins, spreads)."""
    margins, spreads = [], []
    for c in range(num_categories):
        sides = np.array([s for k, s in frames if k == c], np.float64).reshape(-1, 4)
        margins.append(
            [float(v) for v in np.median(sides, axis=0)] if len(sides) else list(fallback)
        )
        spreads.append([float(v) for v in sides.std(axis=0)] if len(sides) >= MIN_FRAMES else None)
    return margins, spreads


def snap(changed: np.ndarray, box, margins, inset: float) -> list[float] | None:
    """The frame the labels' habit draws around the changed pixels inside ``box`` (less
    ``inset`` times ``margins`` per side); None when none is there."""
    m = [max(0.0, inset * v) for v in margins]
    tight = changed_extent(changed, box[0] + m[0], box[1] + m[1], box[2] - m[2], box[3] - m[3])
    if tight is None:
        return None
    return [
        tight[0] - margins[0],
        tight[1] - margins[1],
        tight[2] + margins[2],
        tight[3] + margins[3],
    ]


#: numbers :func:`topology` gives per proposal
TOPOLOGY_FEATURES = 3


def topology(image: np.ndarray, reference: np.ndarray, box, config: PairConfig) -> list[float]:
    """How the pattern changed inside ``box`` (grey images, aligned): the share of the changed
    pixels that turned bright, and the change in the number of bright and of dark pieces
    (8-connected, each clipped to +-2 and halved). A break splits a track (one more piece), a
    bridge joins two, a hole adds a dark piece inside a bright one, stray copper a new piece:
    what tells a PCB's open from a mouse bite, a short from a spur and a spur from spurious
    copper, which the crop (shrunk to ``crop`` px) shows less surely. Turns and flips keep it."""
    h, w = image.shape[:2]
    x1, y1 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    x2, y2 = min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))
    if x2 <= x1 or y2 <= y1:
        return [0.5, 0.0, 0.0]
    test = image[y1:y2, x1:x2] > config.binarise
    ref = reference[y1:y2, x1:x2] > config.binarise
    bright, dark = int((test & ~ref).sum()), int((~test & ref).sum())

    def pieces(mask: np.ndarray) -> int:
        return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1

    def change(a: int, b: int) -> float:
        return float(np.clip(a - b, -2, 2)) / 2

    return [
        bright / (bright + dark) if bright + dark else 0.5,
        change(pieces(test), pieces(ref)),
        change(pieces(~test), pieces(~ref)),
    ]


def crop(image: np.ndarray, reference: np.ndarray, box, config: PairConfig):
    """A ``crop`` x ``crop`` window of (image, reference) (grey, uint8: what is kept in memory
    for training, 8 kB a crop) centred on ``box``; bigger boxes are shrunk to fit with their
    context. Returns the stack and the scale used (the network is told it). The network's input
    is :func:`as_input` of it."""
    side_px = config.crop
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(side_px, config.context * max(box[2] - box[0], box[3] - box[1]))
    scale = side_px / side
    m = np.array([[scale, 0, side_px / 2 - scale * cx], [0, scale, side_px / 2 - scale * cy]])
    chans = [
        cv2.warpAffine(img, m, (side_px, side_px), flags=cv2.INTER_AREA, borderValue=0)
        for img in (image, reference)
    ]
    return np.stack(chans), scale


def as_input(crops: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 2, S, S] crops of (image, reference) -> float [N, 3, S, S]: both in [0, 1] and
    their difference."""
    x = crops.float() / 255.0
    return torch.cat([x, x[:, :1] - x[:, 1:]], 1)


#: the topology numbers as one-hot kinds (:func:`topology_kinds`)
TOPOLOGY_KINDS = 13


def topology_kinds(extra: torch.Tensor) -> torch.Tensor:
    """[N, 3] topology numbers -> [N, 13] one-hot: the changed pixels mostly dark, mixed or
    mostly bright; the bright and the dark pieces' change (-2..2 each)."""
    share = extra[:, 0]
    turned = torch.stack([share < 0.2, (share >= 0.2) & (share <= 0.8), share > 0.8], 1)
    bright = nn.functional.one_hot((extra[:, 1] * 2 + 2).round().long().clamp(0, 4), 5)
    dark = nn.functional.one_hot((extra[:, 2] * 2 + 2).round().long().clamp(0, 4), 5)
    return torch.cat([turned.float(), bright.float(), dark.float()], 1)


class PairNet(nn.Module):
    """Six convolutions on the (image, reference, difference) crop, the crop's scale and the
    ``extra`` numbers of :func:`topology` beside the pooled features; outputs: category logits
    (index 0: no defect), box offsets (per side, in units of the box's width and height), and
    the corrected box's IoU (a logit).

    With the topology numbers, their one-hot kinds also add to the category logits directly (a
    linear "wide" path), and the pooled features are dropped out (``dropout``) for the
    categories in training: without both, the network leaned on the crop alone and named
    DeepPCB's defects as before (benchmarks/two_stage_boxes.py)."""

    def __init__(self, num_categories: int, extra: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.extra = extra
        self.drop = nn.Dropout(dropout)
        self.wide = nn.Linear(TOPOLOGY_KINDS, num_categories + 1) if extra else None

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)
            )

        c = (24, 48, 64, 96, 128)
        self.features = nn.Sequential(
            block(3, c[0]), nn.MaxPool2d(2), block(c[0], c[1]), block(c[1], c[2]), nn.MaxPool2d(2),
            block(c[2], c[3]), block(c[3], c[3]), nn.MaxPool2d(2), block(c[3], c[4]),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.cls = nn.Linear(c[4] + 1 + extra, num_categories + 1)
        self.box = nn.Linear(c[4] + 1 + extra, 4)
        self.quality = nn.Linear(c[4] + 1 + extra, 1)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, extra: torch.Tensor):
        features, extra = self.features(x), extra[:, : self.extra]
        h = torch.cat([features, scale[:, None], extra], 1)
        logits = self.cls(torch.cat([self.drop(features), scale[:, None], extra], 1))
        if self.wide is not None:
            logits = logits + self.wide(topology_kinds(extra))
        return logits, self.box(h), self.quality(h)[:, 0]


def build_net(num_categories: int, config: PairConfig) -> PairNet:
    if not config.topology:
        return PairNet(num_categories)
    return PairNet(num_categories, TOPOLOGY_FEATURES, config.dropout)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the eight quarter turns and flips of a batch of crops."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def offset_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes given as offsets of one box's sides in units of its width and height
    (``[dx1, dy1, dx2, dy2]``): scaling x and y keeps IoU, so this is the pixels' IoU."""
    ax1, ay1, ax2, ay2 = a[:, 0], a[:, 1], 1 + a[:, 2], 1 + a[:, 3]
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], 1 + b[:, 2], 1 + b[:, 3]
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0) + (bx2 - bx1) * (by2 - by1)
    return inter / (union - inter).clamp(min=1e-6)


@dataclass
class _Samples:
    x: torch.Tensor
    scale: torch.Tensor
    extra: torch.Tensor  # topology(): [N, TOPOLOGY_FEATURES]
    label: torch.Tensor
    offsets: torch.Tensor
    per_image: list[int] = field(default_factory=list)


def _samples(dataset: CocoDetectionDataset, config: PairConfig, margins, props) -> _Samples:
    xs, ss, es, ys, regs = [], [], [], [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        test, ref = grey(sample.image), grey(sample.reference)
        for p in props[i]:
            box = grow(p, margins)
            best, label, gt = 0.0, 0, None
            for g, c in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
                o = box_iou(box, g)
                if o > best:
                    best, label, gt = o, c + 1, g
            x, s = crop(test, ref, box, config)
            xs.append(x)
            ss.append(s)
            es.append(topology(test, ref, box, config))
            ys.append(label if best >= 0.5 else 0)
            w, h = box[2] - box[0], box[3] - box[1]
            regs.append(
                [(gt[0] - box[0]) / w, (gt[1] - box[1]) / h, (gt[2] - box[2]) / w,
                 (gt[3] - box[3]) / h] if gt is not None and best >= 0.5 else [0.0] * 4
            )  # fmt: skip
    if not xs:
        raise DetectionDataError(
            "no changed pixels between the training images and their references: nothing to "
            "learn from (are the pairs aligned, and do the labelled images differ from them?)"
        )
    if not any(ys):
        raise DetectionDataError(
            f"none of the {len(xs)} changed places of the training pairs lies on a labelled "
            "defect (IoU >= 0.5 with a box grown by the fitted margins): the labels and the "
            "changes do not meet (are the pairs aligned, and is this a scan of a near-binary "
            "pattern?)"
        )
    return _Samples(
        torch.from_numpy(np.stack(xs)),
        torch.tensor(ss, dtype=torch.float32),
        torch.tensor(es, dtype=torch.float32),
        torch.tensor(ys),
        torch.tensor(regs, dtype=torch.float32),
    )


def _identity(config, categories, dataset, margins, samples: int, steps: int) -> dict[str, Any]:
    """What a checkpoint must match to be continued: the settings (not the thread count), the
    categories, the images with their references, boxes and labels, and what was made of them
    (margins, proposals, steps per epoch: the schedule's length)."""
    from .checkpoint import dataset_fingerprint

    settings = {k: v for k, v in config.to_dict().items() if k not in PairConfig.PREDICTION_ONLY}
    return {
        "format": FORMAT,
        "config": settings,
        "categories": [[c.id, c.name] for c in categories],
        "dataset_sha256": dataset_fingerprint(dataset),
        "margins": [round(float(m), 4) for m in margins],
        "samples": samples,
        "steps_per_epoch": steps,
    }


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:  # tensors and plain values only: a stored file runs no code when read
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same plain answer
        raise CheckpointError(
            f"cannot read training checkpoint {path} ({exc}); delete it to train from the start"
        ) from exc
    if not isinstance(payload, dict) or (payload.get("identity") or {}).get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a two-stage training checkpoint")
    return payload


def train(
    train_json: str | Path,
    output: str | Path,
    *,
    image_root: str | Path | None = None,
    reference_root: str | Path | None = None,
    config: PairConfig | None = None,
    image_filter: Callable[[dict[str, Any]], bool] | None = None,
    progress: ProgressCallback | None = None,
    val_json: str | Path | None = None,
    val_image_root: str | Path | None = None,
    val_reference_root: str | Path | None = None,
    val_filter: Callable[[dict[str, Any]], bool] | None = None,
    eval_every: int = 5,
    checkpoint: str | Path | None = None,
) -> TrainResult:
    """Train on a COCO file whose images name their aligned references (``reference_file_name``
    or DeepPCB's ``template_file_name``, under ``reference_root``) and write the artifact.

    The same contract as :func:`workers.detection.train`: ``progress(fraction, message,
    metrics)`` (metrics at each epoch's end; it may raise :class:`Cancelled`), a checkpoint
    written after every epoch and continued from when it matches (else
    :class:`CheckpointError`), validation with pycocotools every ``eval_every`` epochs and after
    the last (``map``, ``map50``, ``ap_small`` and per category).
    """
    cfg = config or PairConfig()
    report = progress or (lambda f, m, d: None)
    dataset = CocoDetectionDataset(
        train_json,
        image_root,
        image_filter=image_filter,
        references=True,
        reference_root=reference_root,
    )
    if len(dataset) == 0:
        raise DetectionDataError(f"no training images in {train_json}")
    if not any(len(dataset.targets(i)[0]) for i in range(len(dataset))):
        raise DetectionDataError(f"no labelled boxes in {train_json}: nothing to learn")
    categories = dataset.categories
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    start = time.time()
    report(0.0, f"Finding the changed pixels of {len(dataset)} pairs", None)
    props, pairs, frames = [], [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        props.append(proposals(sample.image, sample.reference, cfg))
        pairs.append((props[-1], sample.boxes.tolist()))
        changed = changed_pixels(sample.image, sample.reference, cfg)
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
            sides = frame_sides(changed, box)
            if sides is not None:
                frames.append((int(label), sides))
    total = sum(len(p) for p in props)
    if total > MAX_TRAIN_CROPS:
        raise DetectionDataError(
            f"{total} changed places in {len(dataset)} training pairs, more than the "
            f"{MAX_TRAIN_CROPS} this training keeps in memory: are the pairs aligned, and is this "
            "a scan of a near-binary pattern (photographs change everywhere)?"
        )
    margins = fit_margins(pairs)
    category_margins, category_spreads = fit_category_margins(frames, len(categories), margins)
    data = _samples(dataset, cfg, margins, props)

    ckpt = Path(checkpoint) if checkpoint is not None else None
    n = len(data.label)
    batch_size = min(cfg.batch_size, n)
    # a small project's few proposals still get some steps per epoch (drawn again, reshuffled)
    steps_per_epoch = max(math.ceil(n / batch_size), cfg.min_steps_per_epoch)
    identity = _identity(cfg, categories, dataset, margins, n, steps_per_epoch)
    networks = max(1, int(cfg.networks))
    total_epochs = networks * cfg.epochs

    def fresh(member: int):
        """Network ``member``'s weights, optimiser, schedule and sample order, from its seed."""
        torch.manual_seed(cfg.seed + member)
        net = build_net(len(categories), cfg)
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch
        )
        return net, optimizer, scheduler, np.random.default_rng(cfg.seed + member)

    history: list[dict[str, Any]] = []
    finished: list[dict[str, torch.Tensor]] = []  # the networks trained to their last epoch
    first = 0
    net, optimizer, scheduler, rng = fresh(0)
    if ckpt is not None and ckpt.exists():
        saved = _read_checkpoint(ckpt)
        # a checkpoint written before ``networks`` was a setting trained one network
        saved["identity"]["config"].setdefault("networks", 1)
        if saved["identity"] != identity:
            raise CheckpointError(
                f"training checkpoint {ckpt} was written for other images or settings; delete "
                "it to train from the start"
            )
        history = list(saved["history"])
        first = int(saved["epoch"])
        finished = list(saved.get("finished") or [])
        if first % cfg.epochs:  # within a network: continue it exactly
            net, optimizer, scheduler, rng = fresh(first // cfg.epochs)
            net.load_state_dict(saved["net"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["torch_rng"])
            rng.bit_generator.state = saved["rng"]

    val = None
    if val_json is not None:
        val = (
            val_json,
            val_image_root or image_root,
            val_reference_root or val_image_root or reference_root,
            val_filter,
        )
    for step in range(first, total_epochs):
        member, epoch = divmod(step, cfg.epochs)
        if epoch == 0 and member > 0:  # the next network (or, resumed, the one to start)
            net, optimizer, scheduler, rng = fresh(member)
        began = time.time()
        net.train()
        draws = math.ceil(steps_per_epoch * batch_size / n)
        order = torch.from_numpy(np.concatenate([rng.permutation(n) for _ in range(draws)]))
        total, seen = 0.0, 0
        which = f"network {member + 1}/{networks}, " if networks > 1 else ""
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            seen += len(idx)
            upright = int(round(len(idx) * cfg.upright))
            k = int(rng.integers(1, 8))
            x = as_input(data.x[idx])
            x = torch.cat([x[:upright], dihedral(x[upright:], k)])
            x = x + 0.03 * torch.randn_like(x)
            logits, offsets, quality = net(x, data.scale[idx], data.extra[idx])
            labels = data.label[idx]
            loss = nn.functional.cross_entropy(logits, labels, label_smoothing=0.05)
            pos = labels > 0
            pos[upright:] = False
            if pos.any():
                target = data.offsets[idx][pos]
                loss = loss + 5 * nn.functional.smooth_l1_loss(offsets[pos], target, beta=0.05)
                placed = offset_iou(offsets[pos].detach(), target)
                loss = loss + nn.functional.binary_cross_entropy_with_logits(quality[pos], placed)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            if b % 20 == 0:
                done = (step + b / steps_per_epoch) / total_epochs
                report(done, f"{which}epoch {epoch + 1}/{cfg.epochs}: batch {b + 1}", None)
        metrics: dict[str, Any] = {
            "epoch": step + 1,  # counted over all the networks (the checkpoint's and the job's)
            "loss": round(total / seen, 5),
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": round(time.time() - began, 2),  # the epoch's training (as PP-YOLOE's)
        }
        if networks > 1:
            metrics["network"] = member + 1
        last_of_net = epoch + 1 == cfg.epochs
        if last_of_net:
            finished.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        if val is not None and ((epoch + 1) % max(1, eval_every) == 0 or last_of_net):
            # within a network, that network alone; after its last epoch, all the networks
            # trained so far together (as they will predict)
            nets = [_net_of(categories, cfg, sd) for sd in finished] if last_of_net else [net]
            detector = PairDetector(
                nets,
                categories,
                cfg,
                margins,
                category_margins=category_margins,
                category_spreads=category_spreads,
            )
            metrics.update(_validate(detector, *val))
            metrics["eval_seconds"] = round(time.time() - began - metrics["seconds"], 2)
            net.train()
        history.append(metrics)
        if ckpt is not None:
            from .checkpoint import save_checkpoint

            save_checkpoint(
                ckpt,
                {
                    "identity": identity,
                    "net": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "rng": rng.bit_generator.state,
                    "history": history,
                    "epoch": step + 1,
                    "finished": finished,
                    "margins": margins,  # an artifact can be written from it
                    "category_margins": category_margins,
                    "category_spreads": category_spreads,
                },
            )
        report((step + 1) / total_epochs, f"{which}epoch {epoch + 1}/{cfg.epochs} done", metrics)

    out = save(
        output, finished, categories, cfg, margins, {"history": history}, category_margins,
        category_spreads,
    )  # fmt: skip
    return TrainResult(
        artifact=out,
        epochs=total_epochs,
        iterations=total_epochs * steps_per_epoch,
        seconds=time.time() - start,
        history=history,
        resumed_from_epoch=first,
    )


def _validate(
    detector: PairDetector, val_json, image_root, reference_root, image_filter
) -> dict[str, Any]:
    from .evaluation import evaluate

    result = evaluate(
        detector,
        val_json,
        image_root=image_root,
        image_filter=image_filter,
        reference_root=reference_root,
        batch_size=1,
    )
    return {
        "map": result.map,
        "map50": result.map50,
        "ap_small": result.ap_small,
        "per_class_ap50": result.per_class_ap50,
        "per_class_ap": result.per_class_ap,
        "per_class_ap_small": result.per_class_ap_small,
        "per_class_pr": result.per_class_pr,
    }


def _net_of(categories, config: PairConfig, state: dict[str, torch.Tensor]) -> PairNet:
    net = build_net(len(categories), config)
    net.load_state_dict(state, strict=True)
    return net.eval()


def save(
    path, nets, categories, config: PairConfig, margins, metadata=None,
    category_margins=None, category_spreads=None,
) -> Path:  # fmt: skip
    """Write the artifact atomically (temp file + rename). ``nets``: one :class:`PairNet` or
    a list of them or of their state dicts (an ensemble, see ``PairConfig.networks``).
    ``category_margins`` and
    ``category_spreads`` (per category index, per side; see :func:`fit_category_margins`):
    without them the boxes are the network's alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "categories": [{"id": c.id, "name": c.name} for c in categories],
        "margins": [float(m) for m in margins],
        "category_margins": (
            [[float(v) for v in m] for m in category_margins] if category_margins else None
        ),
        "category_spreads": (
            [None if m is None else [float(v) for v in m] for m in category_spreads]
            if category_spreads
            else None
        ),
        "state_dicts": [
            {
                k: v.detach().cpu()
                for k, v in (n.state_dict() if isinstance(n, nn.Module) else n).items()
            }
            for n in (nets if isinstance(nets, list | tuple) else [nets])
        ],
        "metadata": metadata or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def save_from_checkpoint(
    checkpoint: str | Path, path: str | Path, categories, config: PairConfig
) -> tuple[Path, list[dict[str, Any]]]:
    """The artifact of a training stopped after an epoch (a time budget spent): the networks
    trained to their last epoch, or the one in training when none is; and the history."""
    saved = _read_checkpoint(Path(checkpoint))
    history = list(saved["history"])
    out = save(
        path, list(saved.get("finished") or []) or [saved["net"]], categories, config,
        saved["margins"], {"history": history}, saved.get("category_margins"),
        saved.get("category_spreads"),
    )  # fmt: skip
    return out, history


def is_artifact(path: str | Path) -> bool:
    """Whether ``path`` is an artifact of this model (read lazily: no weights are loaded)."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a torch file, or not this format
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load(path: str | Path) -> PairDetector:
    """The detector of an artifact written by :func:`train` (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(f"model artifact {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - not a torch file
        raise DetectionError(f"{path} is not a two-stage change detector ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DetectionError(f"{path} is not a two-stage change detector")
    categories = [
        Category(id=int(c["id"]), name=str(c["name"]), index=i)
        for i, c in enumerate(payload["categories"])
    ]
    # an artifact written before the topology numbers has none
    config = PairConfig.from_dict({"topology": False, **payload["config"]})
    # version 3 keeps every network of an ensemble; 1 and 2 kept one
    states = payload.get("state_dicts") or [payload["state_dict"]]
    nets = [_net_of(categories, config, state) for state in states]
    return PairDetector(
        nets, categories, config, payload["margins"], payload.get("metadata"),
        category_margins=payload.get("category_margins"),
        category_spreads=payload.get("category_spreads"),
    )  # fmt: skip


@dataclass
class PairOutputs:
    """What the network said about one pair's proposals (:meth:`PairDetector.outputs`)."""

    boxes: np.ndarray  # the proposals grown by the margins, [N, 4] x1 y1 x2 y2
    probs: np.ndarray  # [N, 1 + categories], index 0: no defect (mean of the turns and networks)
    offsets: np.ndarray  # [N, 4] per side, in units of the box's width and height
    quality: np.ndarray  # [N] the corrected box's expected IoU
    shape: tuple[int, int]  # the image's height and width
    changed: np.ndarray | None  # the changed pixels the boxes are drawn to


class PairDetector:
    """A loaded two-stage change detector: ``predict(image, reference=...)`` like a Siamese
    :class:`~workers.detection.Detector` (the reference aligned to the image, at its size). It
    reads whole images at full resolution (no slices: proposals are pixels, crops are local);
    ``predict_sliced`` is the same call, for the callers that slice other detectors."""

    runtime = "torch"
    precision = "fp32"
    device = torch.device("cpu")
    trained_on = None
    siamese = True
    model_config = SimpleNamespace(siamese=True)
    #: crops through the network at once (bounds memory on a pair with many changes)
    CHUNK = 256
    #: most boxes one image gives (as PP-YOLOE-SOD's 500 after NMS)
    MAX_DETECTIONS = 500

    def __init__(
        self, nets, categories, config, margins, metadata=None, category_margins=None,
        category_spreads=None,
    ) -> None:  # fmt: skip
        #: one network or an ensemble (their outputs averaged)
        self.nets = [n.eval() for n in (nets if isinstance(nets, list | tuple) else [nets])]
        self.net = self.nets[0]
        self.categories = categories
        self.config = config
        self.margins = list(margins)
        self.metadata = metadata or {}
        #: per category index, per side (an artifact written before them has none: the
        #: network's boxes are kept as they are)
        self.category_margins = category_margins
        self.category_spreads = category_spreads

    @torch.no_grad()
    def predict(
        self,
        image: str | Path | np.ndarray,
        score_threshold: float = 0.05,
        reference: str | Path | np.ndarray | None = None,
    ) -> list[Detection]:
        if reference is None:
            raise DetectionError(
                "a two-stage change detector compares each image with its reference: none given"
            )
        img = load_image(image) if isinstance(image, str | Path) else image
        ref = load_image(reference) if isinstance(reference, str | Path) else reference
        outputs = self.outputs(img, ref)
        if outputs is None:
            return []
        return self.detections(outputs, score_threshold)

    @torch.no_grad()
    def outputs(self, image: np.ndarray, reference: np.ndarray) -> PairOutputs | None:
        """The network's outputs on a pair's proposals (None when nothing changed): what
        :meth:`detections` turns into boxes, kept apart so that a benchmark can score several
        settings of the boxes from one pass."""
        test, tmpl = grey(image), grey(reference)
        props = proposals(test, tmpl, self.config)
        if not props:
            return None
        boxes = [grow(p, self.margins) for p in props]
        crops, scales = zip(*(crop(test, tmpl, b, self.config) for b in boxes), strict=True)
        x = as_input(torch.from_numpy(np.stack(crops)))
        s = torch.tensor(scales, dtype=torch.float32)
        e = torch.tensor(
            [topology(test, tmpl, b, self.config) for b in boxes]
            if self.net.extra
            else [[]] * len(boxes),
            dtype=torch.float32,
        )
        probs, offsets, quality = [], [], []
        was = [net.training for net in self.nets]
        for net in self.nets:
            net.eval()
        count = len(self.nets)
        for i in range(0, len(x), self.CHUNK):
            xc, sc, ec = x[i : i + self.CHUNK], s[i : i + self.CHUNK], e[i : i + self.CHUNK]
            probs.append(
                sum(
                    torch.softmax(net(dihedral(xc, k), sc, ec)[0], 1)
                    for net in self.nets
                    for k in range(8)
                )
                / (8 * count)
            )
            upright = [net(xc, sc, ec) for net in self.nets]
            offsets.append(sum(o for _, o, _ in upright) / count)
            quality.append(sum(torch.sigmoid(q) for _, _, q in upright) / count)
        for net, mode in zip(self.nets, was, strict=True):
            net.train(mode)
        return PairOutputs(
            np.array(boxes, np.float64),
            torch.cat(probs).numpy(),
            torch.cat(offsets).numpy(),
            torch.cat(quality).numpy(),
            test.shape[:2],
            changed_pixels(test, tmpl, self.config),
        )

    def predict_sliced(self, image, slice_size=None, overlap=None, score_threshold=0.05,
                       batch_size=None, reference=None) -> list[Detection]:  # fmt: skip
        return self.predict(image, score_threshold=score_threshold, reference=reference)

    def detections(self, outputs: PairOutputs, threshold: float) -> list[Detection]:
        """Boxes scored >= ``threshold`` from :meth:`outputs` (with the config's settings)."""
        boxes, probs, quality = outputs.boxes, outputs.probs, outputs.quality
        h, w = outputs.shape
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = boxes + outputs.offsets * np.stack([bw, bh, bw, bh], 1)  # a new array
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        q = np.clip(quality, 1e-3, 1.0)
        top_n = min(self.config.categories_per_proposal, len(self.categories))
        rows = []  # (proposal, category index, score, runner-up's score)
        for j in range(len(boxes)):
            if boxes[j, 2] <= boxes[j, 0] or boxes[j, 3] <= boxes[j, 1]:
                continue
            order = np.argsort(-probs[j, 1:])
            for rank, c in enumerate(order[:top_n]):
                score = float(probs[j, 1 + c] * q[j])
                if score < threshold:
                    continue
                other = order[1] if rank == 0 and len(order) > 1 else order[0]
                second = float(probs[j, 1 + other] * q[j]) if len(order) > 1 else None
                rows.append((j, int(c), score, second))
        if not rows:
            return []
        placed = self._placed(boxes, rows, outputs.changed, w, h)
        from torchvision.ops import batched_nms

        # overlapping boxes of a category (IoU > 0.5): the best scored stays; at most MAX_DETECTIONS
        keep = batched_nms(
            torch.tensor(placed, dtype=torch.float32),
            torch.tensor([r[2] for r in rows], dtype=torch.float32),
            torch.tensor([r[1] for r in rows]),
            0.5,
        )[: self.MAX_DETECTIONS]
        out = []
        for k in keep.tolist():
            j, c, score, second = rows[k]
            cat, b = self.categories[c], placed[k]
            out.append(
                Detection(
                    float(b[0]), float(b[1]), float(b[2]), float(b[3]), score, cat.id, cat.name,
                    second if len(self.categories) > 1 else None,
                )
            )  # fmt: skip
        out.sort(key=lambda d: -d.score)
        return out

    def _placed(self, boxes, rows, changed, w: int, h: int) -> np.ndarray:
        """Each row's box: per side, the network's and :func:`snap`'s frame of its category
        weighted by the inverse of their variances (``box_sd`` squared, and the category's
        spread squared); the network's where no changed pixel is inside it, or the category's
        spread is unknown."""
        placed = boxes[[r[0] for r in rows]].copy()
        sd = self.config.box_sd
        if changed is None or not self.category_margins or not self.category_spreads or sd <= 0:
            return placed
        for k, (_, c, _, _) in enumerate(rows):
            spread = self.category_spreads[c]
            if spread is None:
                continue
            frame = snap(changed, placed[k], self.category_margins[c], self.config.snap_inset)
            if frame is not None:
                weight = sd**2 / (sd**2 + np.square(spread))
                placed[k] = (1 - weight) * placed[k] + weight * np.array(frame)
        placed[:, [0, 2]] = placed[:, [0, 2]].clip(0, w)
        placed[:, [1, 3]] = placed[:, [1, 3]].clip(0, h)
        return placed
