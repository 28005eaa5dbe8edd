"""Multi-class NMS with PaddleDetection's MultiClassNMS semantics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torchvision.ops import nms

if TYPE_CHECKING:  # pragma: no cover
    from .config import ModelConfig


def multiclass_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float = 0.01,
    nms_threshold: float = 0.6,
    nms_top_k: int = 10000,
    keep_top_k: int = 500,
    with_second: bool = False,
) -> torch.Tensor:
    """Per-class greedy NMS for one image.

    Args:
        boxes: [L, 4] x1y1x2y2 shared by all classes.
        scores: [C, L] per-class scores.
        with_second: add a 7th column, ``second``: the best score of the other classes at the
            kept row's anchor (0.0 with one class). Which rows are kept and their scores do not
            change.
    Returns:
        [K, 6] rows of (label, score, x1, y1, x2, y2) ([K, 7] with ``second``), sorted by
        score, K <= keep_top_k.

    As in Paddle: per class keep scores > ``score_threshold``, at most ``nms_top_k`` by
    score, suppress IoU > ``nms_threshold``; then keep the best ``keep_top_k`` over classes.
    """
    out = []
    boxes = boxes.float()
    # the two best classes of every anchor: a kept row's "second" is the best of the others
    top2 = torch.topk(scores.float(), 2, dim=0) if with_second and scores.shape[0] > 1 else None
    for c in range(scores.shape[0]):
        s = scores[c].float()
        idx = torch.nonzero(s > score_threshold).flatten()
        if idx.numel() == 0:
            continue
        if nms_top_k > -1 and idx.numel() > nms_top_k:
            idx = idx[torch.topk(s[idx], nms_top_k).indices]
        keep = idx[nms(boxes[idx], s[idx], nms_threshold)]
        label = torch.full((keep.numel(), 1), float(c), device=boxes.device)
        columns = [label, s[keep, None], boxes[keep]]
        if with_second:
            columns.append(_second_best(top2, c, keep)[:, None])
        out.append(torch.cat(columns, dim=1))
    if not out:
        return boxes.new_zeros((0, 7 if with_second else 6))
    dets = torch.cat(out)
    order = torch.argsort(dets[:, 1], descending=True, stable=True)
    if keep_top_k > -1:
        order = order[:keep_top_k]
    return dets[order]


def _second_best(top2, c: int, anchors: torch.Tensor) -> torch.Tensor:
    """The best score of the classes other than ``c`` at ``anchors`` (``top2``: the
    ``torch.topk(scores, 2, dim=0)`` of [C, L] scores; None with one class: 0.0)."""
    if top2 is None:
        return torch.zeros(anchors.numel(), device=anchors.device)
    values, classes = top2.values[:, anchors], top2.indices[:, anchors]
    return torch.where(classes[0] == c, values[1], values[0])


def postprocess(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    cfg: ModelConfig,
    score_threshold: float,
    with_second: bool = False,
) -> list[torch.Tensor]:
    """Per-image NMS of a batch (scores [N, L, C], boxes [N, L, 4]) with the config's SOD
    limits; rows (label, score, x1, y1, x2, y2), and ``second`` (:func:`multiclass_nms`) with
    ``with_second``. The one post-processing every runtime shares (torch eager, ONNX Runtime,
    OpenVINO)."""
    return [
        multiclass_nms(
            boxes[i],
            scores[i].transpose(0, 1),
            score_threshold=score_threshold,
            nms_threshold=cfg.nms_threshold,
            nms_top_k=cfg.nms_top_k,
            keep_top_k=cfg.keep_top_k,
            with_second=with_second,
        )
        for i in range(scores.shape[0])
    ]
