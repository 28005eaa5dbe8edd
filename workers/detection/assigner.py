"""TaskAlignedAssigner_CR: TOOD's task-aligned assignment with centre-region candidates.

A faithful port of PaddleDetection's ``task_aligned_assigner_cr.py`` and the helpers it uses.
Shapes: B images, n (padded) ground-truth boxes, L anchor points, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def batch_iou_similarity(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of every box in ``box1`` [B, M1, 4] with every box in ``box2`` [B, M2, 4] (x1y1x2y2)."""
    p1, p2 = box1[:, :, None, 0:2], box1[:, :, None, 2:4]
    g1, g2 = box2[:, None, :, 0:2], box2[:, None, :, 2:4]
    overlap = (torch.minimum(p2, g2) - torch.maximum(p1, g1)).clamp(min=0).prod(-1)
    area1 = (p2 - p1).clamp(min=0).prod(-1)
    area2 = (g2 - g1).clamp(min=0).prod(-1)
    return overlap / (area1 + area2 - overlap + eps)


def check_points_inside_bboxes(
    points: torch.Tensor,
    bboxes: torch.Tensor,
    center_radius_tensor: torch.Tensor,
    eps: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks [B, n, L]: point strictly inside the box, and inside the box-centred square of
    half-size ``center_radius_tensor`` (per-anchor, [L, 1])."""
    x, y = points[None, None, :, 0:1], points[None, None, :, 1:2]
    xmin, ymin, xmax, ymax = bboxes[:, :, None, :].chunk(4, dim=-1)
    ltrb = torch.cat([x - xmin, y - ymin, xmax - x, ymax - y], dim=-1)
    is_in_bboxes = ltrb.min(dim=-1).values > eps
    r = center_radius_tensor[None, None]
    cx, cy = (xmin + xmax) * 0.5, (ymin + ymax) * 0.5
    ltrb_c = torch.cat([x - (cx - r), y - (cy - r), (cx + r) - x, (cy + r) - y], dim=-1)
    is_in_center = ltrb_c.min(dim=-1).values > eps
    return is_in_bboxes.to(bboxes.dtype), is_in_center.to(bboxes.dtype)


def gather_topk_anchors(
    metrics: torch.Tensor, topk: int, topk_mask: torch.Tensor | None = None, eps: float = 1e-9
) -> torch.Tensor:
    """1 for the ``topk`` anchors with the largest metric per gt, [B, n, L]."""
    num_anchors = metrics.shape[-1]
    topk_metrics, topk_idxs = torch.topk(metrics, min(topk, num_anchors), dim=-1)
    if topk_mask is None:
        topk_mask = (topk_metrics.max(dim=-1, keepdim=True).values > eps).to(metrics.dtype)
    is_in_topk = F.one_hot(topk_idxs, num_anchors).sum(dim=-2).to(metrics.dtype)
    return is_in_topk * topk_mask


def compute_max_iou_anchor(ious: torch.Tensor) -> torch.Tensor:
    """For each anchor, 1 at the gt with the largest IoU, [B, n, L]."""
    num_max_boxes = ious.shape[-2]
    idx = ious.argmax(dim=-2)
    return F.one_hot(idx, num_max_boxes).permute(0, 2, 1).to(ious.dtype)


@dataclass
class Assignment:
    """Targets per anchor: label (bg = num_classes), box (pixels), soft score per class."""

    labels: torch.Tensor  # [B, L] int64
    bboxes: torch.Tensor  # [B, L, 4]
    scores: torch.Tensor  # [B, L, C]
    mask_positive: torch.Tensor  # [B, n, L]


class TaskAlignedAssignerCR:
    """Task-aligned assigner with centre-region fallback (PaddleDetection's ``_CR`` variant)."""

    def __init__(
        self,
        topk: int = 13,
        alpha: float = 1.0,
        beta: float = 6.0,
        center_radius: float = 1.0,
        eps: float = 1e-9,
    ) -> None:
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.center_radius = center_radius
        self.eps = eps

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: torch.Tensor,
        pred_bboxes: torch.Tensor,
        anchor_points: torch.Tensor,
        stride_tensor: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_bboxes: torch.Tensor,
        pad_gt_mask: torch.Tensor,
        bg_index: int,
    ) -> Assignment:
        """Assign targets.

        Args:
            pred_scores: [B, L, C] class probabilities.
            pred_bboxes: [B, L, 4] decoded boxes in pixels.
            anchor_points: [L, 2] anchor centres in pixels.
            stride_tensor: [L, 1] stride of each anchor's level.
            gt_labels: [B, n, 1] int labels in [0, C).
            gt_bboxes: [B, n, 4] boxes in pixels.
            pad_gt_mask: [B, n, 1] 1 for real boxes, 0 for padding.
            bg_index: label given to background anchors (C).
        """
        batch_size, num_anchors, num_classes = pred_scores.shape
        num_max_boxes = gt_bboxes.shape[1]
        device = pred_scores.device
        if num_max_boxes == 0:
            return Assignment(
                labels=torch.full(
                    (batch_size, num_anchors), bg_index, dtype=torch.long, device=device
                ),
                bboxes=torch.zeros(batch_size, num_anchors, 4, device=device),
                scores=torch.zeros(batch_size, num_anchors, num_classes, device=device),
                mask_positive=torch.zeros(batch_size, 0, num_anchors, device=device),
            )
        gt_labels = gt_labels.long()
        ious = batch_iou_similarity(gt_bboxes, pred_bboxes)  # [B, n, L]
        scores_t = pred_scores.permute(0, 2, 1)  # [B, C, L]
        bbox_cls_scores = torch.gather(
            scores_t, 1, gt_labels.expand(-1, -1, num_anchors)
        )  # [B, n, L]
        alignment_metrics = bbox_cls_scores.pow(self.alpha) * ious.pow(self.beta) * pad_gt_mask

        is_in_gts, is_in_center = check_points_inside_bboxes(
            anchor_points, gt_bboxes, stride_tensor * self.center_radius
        )
        is_in_gts = is_in_gts * pad_gt_mask
        is_in_center = is_in_center * pad_gt_mask
        # Boxes too small to contain any anchor point fall back to the centre region, which is
        # what lets tiny objects get positives at all.
        candidate_metrics = torch.where(
            is_in_gts.sum(-1, keepdim=True) == 0,
            alignment_metrics + is_in_center,
            alignment_metrics,
        )
        mask_positive = gather_topk_anchors(candidate_metrics, self.topk, topk_mask=pad_gt_mask) * (
            (is_in_center > 0) | (is_in_gts > 0)
        ).to(pred_scores.dtype)

        mask_positive_sum = mask_positive.sum(dim=-2)
        if mask_positive_sum.max() > 1:
            mask_multiple = (mask_positive_sum.unsqueeze(1) > 1).expand(-1, num_max_boxes, -1)
            is_max_iou = compute_max_iou_anchor(ious * mask_positive)
            mask_positive = torch.where(mask_multiple, is_max_iou, mask_positive)
            mask_positive_sum = mask_positive.sum(dim=-2)
        assigned_gt_index = mask_positive.argmax(dim=-2)  # [B, L]

        batch_ind = torch.arange(batch_size, device=device).unsqueeze(-1)
        flat_index = (assigned_gt_index + batch_ind * num_max_boxes).flatten()
        assigned_labels = gt_labels.flatten()[flat_index].reshape(batch_size, num_anchors)
        assigned_labels = torch.where(
            mask_positive_sum > 0, assigned_labels, torch.full_like(assigned_labels, bg_index)
        )
        assigned_bboxes = gt_bboxes.reshape(-1, 4)[flat_index].reshape(batch_size, num_anchors, 4)

        assigned_scores = F.one_hot(assigned_labels, num_classes + 1).to(pred_scores.dtype)
        keep = [i for i in range(num_classes + 1) if i != bg_index]
        assigned_scores = assigned_scores[..., keep]

        alignment_metrics = alignment_metrics * mask_positive
        max_metrics = alignment_metrics.max(dim=-1, keepdim=True).values
        max_ious = (ious * mask_positive).max(dim=-1, keepdim=True).values
        alignment_metrics = alignment_metrics / (max_metrics + self.eps) * max_ious
        alignment_metrics = alignment_metrics.max(dim=-2).values.unsqueeze(-1)
        assigned_scores = assigned_scores * alignment_metrics
        return Assignment(assigned_labels, assigned_bboxes, assigned_scores, mask_positive)
