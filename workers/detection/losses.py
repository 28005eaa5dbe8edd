"""Varifocal, GIoU and distribution focal losses as PP-YOLOE computes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def varifocal_loss(
    pred_score: torch.Tensor,
    gt_score: torch.Tensor,
    label: torch.Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Summed varifocal loss on probabilities (PP-YOLOE applies BCE to sigmoid outputs).

    Positives are weighted by their IoU-aware target, negatives by ``alpha * p**gamma``.
    The weight is not detached: Paddle multiplies it into the element-wise loss, so gradients
    flow through it, and parity with official training needs the same.
    """
    weight = alpha * pred_score.pow(gamma) * (1 - label) + gt_score * label
    bce = F.binary_cross_entropy(pred_score, gt_score, reduction="none")
    return (bce * weight).sum()


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """1 - GIoU per box pair, [N, 1] for [N, 4] x1y1x2y2 inputs (Paddle's GIoULoss, 'none')."""
    x1, y1, x2, y2 = pred.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    area1 = ((x2 - x1) * (y2 - y1)).clamp(min=0)
    area2 = ((x2g - x1g) * (y2g - y1g)).clamp(min=0)
    w_inter = (torch.minimum(x2, x2g) - torch.maximum(x1, x1g)).clamp(min=0)
    h_inter = (torch.minimum(y2, y2g) - torch.maximum(y1, y1g)).clamp(min=0)
    overlap = w_inter * h_inter
    union = area1 + area2 - overlap + eps
    iou = overlap / union
    area_c = (torch.maximum(x2, x2g) - torch.minimum(x1, x1g)) * (
        torch.maximum(y2, y2g) - torch.minimum(y1, y1g)
    ) + eps
    giou = iou - (area_c - union) / area_c
    return (1 - giou).unsqueeze(-1)


def df_loss(pred_dist: torch.Tensor, target: torch.Tensor, lower_bound: int = 0) -> torch.Tensor:
    """Distribution focal loss, [N, 1].

    ``pred_dist`` [N, 4, R] logits over the bins ``lower_bound .. lower_bound + R - 1``;
    ``target`` [N, 4] distances in stride units. The target is split between its two
    neighbouring bins; ``lower_bound`` shifts bin indices so distances may be negative
    (SOD's reg_range [-2, 8]).
    """
    target_left = target.floor().long()
    target_right = target_left + 1
    weight_left = target_right.to(target.dtype) - target
    weight_right = 1 - weight_left
    logp = F.log_softmax(pred_dist, dim=-1)
    loss_left = -logp.gather(-1, (target_left - lower_bound).unsqueeze(-1)).squeeze(-1)
    loss_right = -logp.gather(-1, (target_right - lower_bound).unsqueeze(-1)).squeeze(-1)
    return (loss_left * weight_left + loss_right * weight_right).mean(-1, keepdim=True)
