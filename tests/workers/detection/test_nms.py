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


def test_second_score_is_the_best_other_class_at_the_kept_box() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [100, 0, 110, 10]])
    scores = torch.tensor(
        [
            [0.9, 0.85, 0.2, 0.05],  # class 0
            [0.3, 0.1, 0.6, 0.4],  # class 1
            [0.5, 0.2, 0.55, 0.3],  # class 2
        ]
    )
    plain = multiclass_nms(boxes, scores, nms_threshold=0.6)
    dets = multiclass_nms(boxes, scores, nms_threshold=0.6, with_second=True)
    assert dets.shape == (len(plain), 7)
    assert torch.equal(dets[:, :6], plain)  # the same boxes, scores and order
    rows = {(int(r[0]), round(float(r[1]), 4)): round(float(r[6]), 4) for r in dets}
    assert rows[(0, 0.9)] == 0.5  # box 0: class 2's 0.5 is the best of the others
    assert rows[(1, 0.6)] == 0.55  # box 2: class 2 is second
    assert rows[(2, 0.55)] == 0.6  # box 2 kept for class 2 too: class 1 beats it there
    assert rows[(1, 0.4)] == 0.3  # box 3: class 2's 0.3, not class 0's 0.05
    assert (0, 0.85) not in rows  # box 1 suppressed by box 0 in class 0


def test_second_score_with_one_class_is_zero() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    dets = multiclass_nms(boxes, torch.tensor([[0.9, 0.4]]), with_second=True)
    assert dets[:, 6].tolist() == [0.0, 0.0]
    assert multiclass_nms(torch.zeros(0, 4), torch.zeros(3, 0), with_second=True).shape == (0, 7)


def test_one_per_place_keeps_the_best_category_and_remembers_the_runner_up() -> None:
    from workers.detection.inference import Detection, one_per_place

    def det(x, score, cat, second=None):
        return Detection(x, 0.0, x + 10.0, 10.0, score, cat, f"c{cat}", second)

    found = [
        det(0, 0.6, 1, 0.1),  # the same place as the next box, another category
        det(0.5, 0.8, 2, 0.2),
        det(0.5, 0.3, 2),  # the same category there: dropped, not a runner-up
        det(7, 0.5, 1),  # neighbouring defect: IoU 3/17, stays
    ]
    kept = one_per_place(found)
    assert [(d.category_id, d.score) for d in kept] == [(2, 0.8), (1, 0.5)]
    assert kept[0].second_score == 0.6  # the other category's box it replaced
    assert kept[1].second_score is None
    # a known runner-up stays when the replaced boxes scored lower
    assert one_per_place([det(0, 0.9, 1, 0.7), det(0, 0.2, 2)])[0].second_score == 0.7
    assert one_per_place([]) == [] and one_per_place(found[:1]) == found[:1]
    # B (another category) is dropped for A; C, kept beside A, also overlaps B but did not drop
    # it: C keeps no runner-up (a runner-up above its own score would make a negative margin)
    a, b, c = det(0, 0.9, 1), det(1.5, 0.8, 2), det(3, 0.7, 1)
    kept = one_per_place([a, b, c])
    assert [(d.x1, d.second_score) for d in kept] == [(0, 0.8), (3, None)]
