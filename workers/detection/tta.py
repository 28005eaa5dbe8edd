"""Test-time augmentation: an image predicted in several orientations, the boxes turned back
and fused (docs/detection.md, "Orientations at prediction").

Works with every runtime's ``predict_sliced`` (torch, ONNX Runtime, OpenVINO, the two-stage
detector): :func:`predict_views` calls it once per view. Measured on DeepPCB
(docs/benchmarks-detection.md, "Test-time augmentation"): the four flips fused by their
score-weighted mean box took a 20-epoch model from 0.663-0.671 to 0.717-0.745 test mAP50,
for four times the prediction time.

The fusion averages the boxes of one category that overlap the best remaining box by IoU
>= 0.55, weighted by score, and scores the fused box by its members' summed score over the
number of views: a box that every view finds keeps its score, one that a single view finds
is divided by the views (weighted boxes fusion's "avg" score, ZFTurbo's ``ensemble-boxes``;
written here in numpy because that package imports numba and pandas).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .inference import Detection

#: (quarter turns anticlockwise, vertical flip, horizontal flip) of each view, by view count:
#: 2 adds the mirror image (every training's horizontal flip), 4 all flips, 8 each flip also
#: turned a quarter (parts with no "up": train with ``TrainConfig.rotate``).
VIEWS: dict[int, tuple[tuple[int, bool, bool], ...]] = {
    1: ((0, False, False),),
    2: ((0, False, False), (0, False, True)),
    4: ((0, False, False), (0, False, True), (0, True, False), (0, True, True)),
}
VIEWS[8] = VIEWS[4] + tuple((1, v, h) for _, v, h in VIEWS[4])
FUSIONS = ("wbf", "nms")
FUSE_IOU = 0.55


def view_image(image: np.ndarray, view: tuple[int, bool, bool]) -> np.ndarray:
    """The image as ``view`` shows it: flipped first, then turned."""
    turns, vflip, hflip = view
    if vflip:
        image = image[::-1]
    if hflip:
        image = image[:, ::-1]
    return np.ascontiguousarray(np.rot90(image, turns))


def boxes_back(boxes: np.ndarray, view: tuple[int, bool, bool], h: int, w: int) -> np.ndarray:
    """Boxes (x1, y1, x2, y2) found in ``view_image(image, view)``, in the pixels of the
    ``h`` x ``w`` original."""
    turns, vflip, hflip = view
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    # np.rot90 turns anticlockwise: (x, y) of the flipped image (width w) went to (y, w - x)
    for _ in range(turns):
        b = np.stack([w - b[:, 3], b[:, 0], w - b[:, 1], b[:, 2]], axis=1)
    if hflip:
        b = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
    if vflip:
        b = np.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], axis=1)
    return b


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def fuse(
    per_view: list[list[Detection]], how: str = "wbf", iou: float = FUSE_IOU
) -> list[Detection]:
    """One list of detections from each view's (already in the original's pixels), by score.

    ``wbf``: the score-weighted mean box of each cluster, scored by the summed score over the
    number of views; ``nms``: the best box of each cluster, as it was scored."""
    if how not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {how!r}")
    found = [d for dets in per_view for d in dets]
    if not found:
        return []
    boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in found], np.float64)
    scores = np.array([d.score for d in found])
    out: list[Detection] = []
    for category in sorted({d.category_id for d in found}):
        left = np.array([i for i, d in enumerate(found) if d.category_id == category])
        left = left[np.argsort(-scores[left], kind="stable")]
        while len(left):
            top = found[left[0]]
            members = left[_iou(boxes[left[0]], boxes[left]) >= iou]
            if how == "nms":
                out.append(top)
            else:
                weights = scores[members][:, None]
                x1, y1, x2, y2 = (boxes[members] * weights).sum(0) / weights.sum()
                seconds = [found[i].second_score for i in members]
                out.append(
                    Detection(
                        float(x1),
                        float(y1),
                        float(x2),
                        float(y2),
                        float(min(1.0, scores[members].sum() / len(per_view))),
                        category,
                        top.category_name,
                        None if None in seconds else float(np.mean(seconds)),
                    )
                )
            left = left[~np.isin(left, members)]
    return sorted(out, key=lambda d: -d.score)


def predict_views(
    predict_sliced: Callable[..., list[Detection]],
    image: np.ndarray,
    views: int = 1,
    fusion: str = "wbf",
    reference: np.ndarray | None = None,
    **kwargs: Any,
) -> list[Detection]:
    """``predict_sliced(image, ...)`` (any runtime's) over ``views`` orientations of the image
    (and of its ``reference``, for a Siamese detector), fused by :func:`fuse`. One view is the
    plain call."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {sorted(VIEWS)}, got {views!r}")
    extra = {} if reference is None else {"reference": reference}
    if views == 1:
        return predict_sliced(image, **kwargs, **extra)
    h, w = image.shape[:2]
    per_view = []
    for view in VIEWS[views]:
        if reference is not None:
            extra = {"reference": view_image(reference, view)}
        dets = predict_sliced(view_image(image, view), **kwargs, **extra)
        back = boxes_back(np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets]), view, h, w)
        per_view.append(
            [
                Detection(*map(float, b), d.score, d.category_id, d.category_name, d.second_score)
                for b, d in zip(back, dets, strict=True)
            ]
        )
    return fuse(per_view, fusion)
