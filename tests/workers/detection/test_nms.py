"""Multi-class NMS with PaddleDetection's limits."""

from __future__ import annotations

import pytest
import torch

from workers.detection.nms import multiclass_nms

pytestmark = pytest.mark.ml


def test_suppresses_same_class_overlap_keeps_other_class_and_sorts() -> None:
    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]]
    )
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.0, 0.3, 0.005],  # class 0
            [0.0, 0.0, 0.7, 0.0, 0.0],  # class 1
        ]
    )
    dets = multiclass_nms(boxes, scores, score_threshold=0.01, nms_threshold=0.6)
    # box 1 overlaps box 0 with IoU 9/11 > 0.6 -> suppressed; box 4 is below the threshold
    assert dets[:, 0].tolist() == [0.0, 1.0, 0.0]
    assert dets[:, 1].tolist() == pytest.approx([0.9, 0.7, 0.3])
    assert dets[0, 2:].tolist() == [0, 0, 10, 10]


def test_overlap_below_threshold_is_kept() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10]])  # IoU 50/150 = 1/3
    scores = torch.tensor([[0.9, 0.8]])
    assert len(multiclass_nms(boxes, scores, nms_threshold=0.6)) == 2
    assert len(multiclass_nms(boxes, scores, nms_threshold=0.3)) == 1


def test_keep_top_k_and_nms_top_k_limits() -> None:
    boxes = torch.tensor([[i * 20.0, 0, i * 20 + 10, 10] for i in range(6)])
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    dets = multiclass_nms(boxes, scores, keep_top_k=3)
    assert dets[:, 1].tolist() == pytest.approx([0.6, 0.5, 0.4])
    dets = multiclass_nms(boxes, scores, nms_top_k=2, keep_top_k=10)
    assert dets[:, 1].tolist() == pytest.approx([0.6, 0.5])


def test_empty_input() -> None:
    assert multiclass_nms(torch.zeros(0, 4), torch.zeros(3, 0)).shape == (0, 6)
