"""PP-YOLOE's efficient task-aligned head (ET-head) with the SOD regression range.

Mirrors PaddleDetection's ``ppdet/modeling/heads/ppyoloe_head.py``: ESE attention stems, the
residual classification branch, distribution regression over ``reg_range`` projected by a
fixed 1x1 conv, anchor-free points with grid-cell anchors for assignment, and the
varifocal + GIoU + DFL loss normalised by the assigned score sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .assigner import TaskAlignedAssignerCR
from .backbone import ConvBNLayer
from .config import ModelConfig
from .losses import df_loss, giou_loss, varifocal_loss


class ESEAttn(nn.Module):
    """Channel attention from the pooled feature, then a 1x1 ConvBN."""

    def __init__(self, feat_channels: int, act: str = "swish") -> None:
        super().__init__()
        self.fc = nn.Conv2d(feat_channels, feat_channels, 1)
        self.conv = ConvBNLayer(feat_channels, feat_channels, 1, act=act)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, feat: torch.Tensor, avg_feat: torch.Tensor) -> torch.Tensor:
        return self.conv(feat * torch.sigmoid(self.fc(avg_feat)))


@dataclass
class HeadOutput:
    """Raw head outputs for all levels concatenated (stride 32 first, like Paddle)."""

    cls_logits: torch.Tensor  # [B, L, C]
    reg_dist: torch.Tensor  # [B, L, 4 * R] logits over distance bins
    anchors: torch.Tensor  # [L, 4] grid-cell anchors in pixels (ATSS-style, for reference)
    anchor_points: torch.Tensor  # [L, 2] pixels
    stride_tensor: torch.Tensor  # [L, 1]
    num_anchors_list: list[int]


def generate_anchors_for_grid_cell(
    feats: list[torch.Tensor],
    fpn_strides: tuple[int, ...],
    grid_cell_size: float = 5.0,
    grid_cell_offset: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
    """Anchor boxes, anchor points (cell centres), counts per level and strides."""
    anchors, points, counts, strides = [], [], [], []
    for feat, stride in zip(feats, fpn_strides, strict=True):
        _, _, h, w = feat.shape
        half = grid_cell_size * stride * 0.5
        shift_x = (
            torch.arange(w, device=feat.device, dtype=torch.float32) + grid_cell_offset
        ) * stride
        shift_y = (
            torch.arange(h, device=feat.device, dtype=torch.float32) + grid_cell_offset
        ) * stride
        shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
        anchor = torch.stack([shift_x - half, shift_y - half, shift_x + half, shift_y + half], -1)
        anchors.append(anchor.reshape(-1, 4))
        points.append(torch.stack([shift_x, shift_y], -1).reshape(-1, 2))
        counts.append(h * w)
        strides.append(torch.full((h * w, 1), float(stride), device=feat.device))
    return torch.cat(anchors), torch.cat(points), counts, torch.cat(strides)


def batch_distance2bbox(points: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """ltrb distances [B, L, 4] around points [L, 2] -> x1y1x2y2 boxes."""
    lt, rb = distance.chunk(2, dim=-1)
    return torch.cat([points - lt, points + rb], dim=-1)


class PPYOLOEHead(nn.Module):
    """ET-head. ``forward`` gives raw outputs; :meth:`loss` and :meth:`decode` use them."""

    def __init__(self, in_channels: list[int], cfg: ModelConfig, act: str = "swish") -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_classes = cfg.num_classes
        self.fpn_strides = tuple(cfg.fpn_strides)
        self.grid_cell_scale = cfg.grid_cell_scale
        self.grid_cell_offset = cfg.grid_cell_offset
        self.reg_range = tuple(cfg.reg_range)
        self.reg_channels = self.reg_range[1] - self.reg_range[0]
        self.loss_weight = {
            "class": cfg.loss_weight_class,
            "iou": cfg.loss_weight_iou,
            "dfl": cfg.loss_weight_dfl,
        }
        self.use_varifocal_loss = cfg.use_varifocal_loss
        self.assigner = TaskAlignedAssignerCR(
            topk=cfg.assigner_topk,
            alpha=cfg.assigner_alpha,
            beta=cfg.assigner_beta,
            center_radius=cfg.assigner_center_radius,
        )
        self.stem_cls = nn.ModuleList([ESEAttn(c, act=act) for c in self.in_channels])
        self.stem_reg = nn.ModuleList([ESEAttn(c, act=act) for c in self.in_channels])
        self.pred_cls = nn.ModuleList(
            [nn.Conv2d(c, self.num_classes, 3, padding=1) for c in self.in_channels]
        )
        self.pred_reg = nn.ModuleList(
            [nn.Conv2d(c, 4 * self.reg_channels, 3, padding=1) for c in self.in_channels]
        )
        # Fixed projection from bin probabilities to a distance: bins are the integers of
        # reg_range, so distances down to -2 strides are representable (tiny boxes).
        self.proj_conv = nn.Conv2d(self.reg_channels, 1, 1, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        bias_cls = -math.log((1 - 0.01) / 0.01)
        for cls_, reg_ in zip(self.pred_cls, self.pred_reg, strict=True):
            nn.init.zeros_(cls_.weight)
            nn.init.constant_(cls_.bias, bias_cls)
            nn.init.zeros_(reg_.weight)
            nn.init.constant_(reg_.bias, 1.0)
        proj = torch.linspace(self.reg_range[0], self.reg_range[1] - 1, self.reg_channels)
        with torch.no_grad():
            self.proj_conv.weight.copy_(proj.reshape(1, self.reg_channels, 1, 1))
        self.proj_conv.weight.requires_grad_(False)

    def forward(self, feats: list[torch.Tensor]) -> HeadOutput:
        if len(feats) != len(self.fpn_strides):
            raise ValueError("number of feature maps does not match fpn_strides")
        anchors, points, counts, strides = generate_anchors_for_grid_cell(
            feats, self.fpn_strides, self.grid_cell_scale, self.grid_cell_offset
        )
        cls_list, reg_list = [], []
        for i, feat in enumerate(feats):
            avg_feat = F.adaptive_avg_pool2d(feat, (1, 1))
            cls_logit = self.pred_cls[i](self.stem_cls[i](feat, avg_feat) + feat)
            reg_dist = self.pred_reg[i](self.stem_reg[i](feat, avg_feat))
            cls_list.append(cls_logit.flatten(2).transpose(1, 2))
            reg_list.append(reg_dist.flatten(2).transpose(1, 2))
        return HeadOutput(
            cls_logits=torch.cat(cls_list, 1),
            reg_dist=torch.cat(reg_list, 1),
            anchors=anchors,
            anchor_points=points,
            stride_tensor=strides,
            num_anchors_list=counts,
        )

    def _distances(self, reg_dist: torch.Tensor) -> torch.Tensor:
        b, n, _ = reg_dist.shape
        prob = F.softmax(reg_dist.reshape(b, n, 4, self.reg_channels), dim=-1)
        return (prob * self.proj_conv.weight.reshape(self.reg_channels)).sum(-1)

    def decode(self, out: HeadOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [B, L, C] (sigmoid) and boxes [B, L, 4] in input-image pixels."""
        dist = self._distances(out.reg_dist)
        boxes = batch_distance2bbox(out.anchor_points, dist * out.stride_tensor)
        return torch.sigmoid(out.cls_logits), boxes

    def _bbox2distance(self, points: torch.Tensor, bbox: torch.Tensor) -> torch.Tensor:
        x1y1, x2y2 = bbox.chunk(2, dim=-1)
        ltrb = torch.cat([points - x1y1, x2y2 - points], dim=-1)
        return ltrb.clamp(self.reg_range[0], self.reg_range[1] - 1 - 0.01)

    def loss(
        self,
        out: HeadOutput,
        gt_labels: torch.Tensor,
        gt_bboxes: torch.Tensor,
        pad_gt_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Training losses for padded targets ``gt_labels`` [B, n, 1], ``gt_bboxes`` [B, n, 4]
        (pixels of the network input) and ``pad_gt_mask`` [B, n, 1]."""
        pred_scores = torch.sigmoid(out.cls_logits)
        anchor_points_s = out.anchor_points / out.stride_tensor
        pred_dist = self._distances(out.reg_dist)
        pred_bboxes = batch_distance2bbox(anchor_points_s, pred_dist)  # stride units

        a = self.assigner(
            pred_scores.detach(),
            pred_bboxes.detach() * out.stride_tensor,
            out.anchor_points,
            out.stride_tensor,
            gt_labels,
            gt_bboxes,
            pad_gt_mask,
            bg_index=self.num_classes,
        )
        assigned_bboxes = a.bboxes / out.stride_tensor
        assigned_scores = a.scores
        if self.use_varifocal_loss:
            one_hot = F.one_hot(a.labels, self.num_classes + 1)[..., :-1].to(pred_scores.dtype)
            loss_cls = varifocal_loss(pred_scores, assigned_scores, one_hot)
        else:  # focal loss, kept for completeness of the config surface
            weight = (pred_scores - assigned_scores).abs().pow(2.0)
            loss_cls = (
                F.binary_cross_entropy(pred_scores, assigned_scores, reduction="none") * weight
            ).sum()
        assigned_scores_sum = assigned_scores.sum().clamp(min=1.0)
        loss_cls = loss_cls / assigned_scores_sum

        mask_positive = a.labels != self.num_classes
        if mask_positive.any():
            pred_bboxes_pos = pred_bboxes[mask_positive]
            assigned_bboxes_pos = assigned_bboxes[mask_positive]
            bbox_weight = assigned_scores.sum(-1)[mask_positive].unsqueeze(-1)
            loss_l1 = F.l1_loss(pred_bboxes_pos, assigned_bboxes_pos)
            loss_iou = (giou_loss(pred_bboxes_pos, assigned_bboxes_pos) * bbox_weight).sum()
            loss_iou = loss_iou / assigned_scores_sum
            pred_dist_pos = out.reg_dist[mask_positive].reshape(-1, 4, self.reg_channels)
            assigned_ltrb = self._bbox2distance(anchor_points_s, assigned_bboxes)
            loss_dfl = df_loss(pred_dist_pos, assigned_ltrb[mask_positive], self.reg_range[0])
            loss_dfl = (loss_dfl * bbox_weight).sum() / assigned_scores_sum
        else:
            zero = out.reg_dist.sum() * 0.0
            loss_l1, loss_iou, loss_dfl = zero, zero, zero
        loss = (
            self.loss_weight["class"] * loss_cls
            + self.loss_weight["iou"] * loss_iou
            + self.loss_weight["dfl"] * loss_dfl
        )
        return {
            "loss": loss,
            "loss_cls": loss_cls,
            "loss_iou": loss_iou,
            "loss_dfl": loss_dfl,
            "loss_l1": loss_l1,
        }
