"""TaskAlignedAssigner_CR on hand-made anchors and boxes."""

from __future__ import annotations

import pytest
import torch

from workers.detection.assigner import TaskAlignedAssignerCR

pytestmark = pytest.mark.ml

STRIDE = 8.0


def grid(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """n x n anchor points at cell centres of stride 8: 4, 12, 20, 28 ..."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) * STRIDE
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    points = torch.stack([xx, yy], -1).reshape(-1, 2)
    return points, torch.full((n * n, 1), STRIDE)


def index(x: float, y: float, n: int = 4) -> int:
    return int(y // STRIDE) * n + int(x // STRIDE)


def run(pred_boxes, pred_scores, gt_boxes, gt_labels, pad=None):
    points, strides = grid()
    gt_boxes = torch.tensor([gt_boxes], dtype=torch.float32)
    gt_labels = torch.tensor([[[g] for g in gt_labels]])
    pad = torch.ones(1, len(gt_labels[0]), 1) if pad is None else torch.tensor([pad]).float()
    return TaskAlignedAssignerCR(topk=13, alpha=1.0, beta=6.0, center_radius=1.0)(
        pred_scores, pred_boxes, points, strides, gt_labels, gt_boxes, pad, bg_index=2
    )


def test_anchors_inside_box_are_positive_and_scores_are_normalised_metrics() -> None:
    gt = [0.0, 0.0, 16.0, 16.0]
    pred_boxes = torch.zeros(1, 16, 4)
    pred_boxes[:] = torch.tensor([40.0, 40, 41, 41])  # far away: IoU 0
    a, b = index(4, 4), index(12, 4)
    pred_boxes[0, a] = torch.tensor(gt)  # IoU 1
    pred_boxes[0, b] = torch.tensor([0.0, 0, 16, 8])  # IoU 0.5
    pred_scores = torch.full((1, 16, 2), 0.9)
    out = run(pred_boxes, pred_scores, [gt], [1])

    inside = {index(4, 4), index(12, 4), index(4, 12), index(12, 12)}
    positives = set(torch.nonzero(out.labels[0] != 2).flatten().tolist())
    assert positives == inside
    assert (out.labels[0, list(inside)] == 1).all()
    assert torch.allclose(out.bboxes[0, a], torch.tensor(gt))
    # metric = score * IoU^6, normalised so the best anchor gets the best IoU (1)
    assert out.scores[0, a, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert out.scores[0, b, 1].item() == pytest.approx(0.5**6, rel=1e-4)
    assert out.scores[0, :, 0].abs().sum().item() == 0.0
    assert out.scores[0, index(4, 12)].sum().item() == pytest.approx(0.0, abs=1e-6)


def test_tiny_box_without_anchor_inside_falls_back_to_centre_region() -> None:
    gt = [13.0, 13.0, 19.0, 19.0]  # 6 px, contains no anchor point (12 and 20 are outside)
    pred_boxes = torch.tensor([[12.0, 12.0, 20.0, 20.0]]).expand(1, 16, 4).clone()
    pred_scores = torch.full((1, 16, 2), 0.5)
    out = run(pred_boxes, pred_scores, [gt], [0])
    # centre (16, 16) +- one stride covers the four points at 12 / 20
    expected = {index(12, 12), index(20, 12), index(12, 20), index(20, 20)}
    assert set(torch.nonzero(out.labels[0] != 2).flatten().tolist()) == expected
    assert (out.labels[0, list(expected)] == 0).all()


def test_anchor_claimed_by_two_boxes_goes_to_higher_iou_and_padding_is_ignored() -> None:
    g1 = [0.0, 0.0, 16.0, 16.0]
    g2 = [8.0, 0.0, 24.0, 16.0]
    shared = index(12, 4)  # inside both boxes
    pred_boxes = torch.tensor([40.0, 40, 41, 41]).expand(1, 16, 4).clone()
    pred_boxes[0, shared] = torch.tensor([9.0, 0, 24, 16])  # IoU with g2 >> with g1
    pred_scores = torch.full((1, 16, 2), 0.9)
    out = run(pred_boxes, pred_scores, [g1, g2, [0, 0, 30, 30]], [0, 1, 0], pad=[[1], [1], [0]])
    assert out.labels[0, shared].item() == 1
    assert torch.allclose(out.bboxes[0, shared], torch.tensor(g2))
    # each anchor is positive for at most one gt
    assert out.mask_positive.sum(1).max().item() == 1.0
    # the padded box [0, 0, 30, 30] would cover every anchor; it must claim none
    assert out.mask_positive[0, 2].sum().item() == 0.0
    assert index(28, 28) not in torch.nonzero(out.labels[0] != 2).flatten().tolist()


def test_image_without_boxes_is_all_background() -> None:
    points, strides = grid()
    out = TaskAlignedAssignerCR()(
        torch.rand(1, 16, 2),
        torch.rand(1, 16, 4),
        points,
        strides,
        torch.zeros(1, 0, 1, dtype=torch.long),
        torch.zeros(1, 0, 4),
        torch.zeros(1, 0, 1),
        bg_index=2,
    )
    assert (out.labels == 2).all() and out.scores.sum() == 0
