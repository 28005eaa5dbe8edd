"""Losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from workers.detection.losses import df_loss, giou_loss, varifocal_loss

pytestmark = pytest.mark.ml


def test_giou_overlapping_identical_and_disjoint() -> None:
    pred = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 1, 1]])
    target = torch.tensor([[1.0, 1, 3, 3], [1, 1, 3, 3], [2, 0, 3, 1]])
    loss = giou_loss(pred, target).squeeze(-1)
    # overlap 1, union 7, hull 9: giou = 1/7 - 2/9
    assert loss[0].item() == pytest.approx(1 - (1 / 7 - 2 / 9), abs=1e-6)
    assert loss[1].item() == pytest.approx(0.0, abs=1e-6)
    # disjoint: iou 0, union 2, hull 3 -> giou = -1/3
    assert loss[2].item() == pytest.approx(4 / 3, abs=1e-6)


def test_dfl_splits_target_between_neighbour_bins_with_lower_bound() -> None:
    # 10 bins for distances -2..7 (reg_range [-2, 8]); bin index = distance + 2
    logits = torch.zeros(1, 4, 10)
    logits[..., 3] = math.log(4.0)  # p(bin 3) = 4/13, every other bin 1/13
    target = torch.full((1, 4), 1.25)  # between distance 1 (bin 3) and 2 (bin 4)
    expected = 0.75 * math.log(13 / 4) + 0.25 * math.log(13)
    assert df_loss(logits, target, lower_bound=-2).item() == pytest.approx(expected, rel=1e-6)

    # a negative distance (tiny box): -1.5 is half bin 0 (-2), half bin 1 (-1)
    logits = torch.zeros(1, 4, 10)
    logits[..., 0] = math.log(4.0)
    target = torch.full((1, 4), -1.5)
    expected = 0.5 * math.log(13 / 4) + 0.5 * math.log(13)
    assert df_loss(logits, target, lower_bound=-2).item() == pytest.approx(expected, rel=1e-6)


def test_varifocal_value_and_gradient_through_weight() -> None:
    pred = torch.tensor([[0.5, 0.2]], requires_grad=True)
    gt = torch.tensor([[0.8, 0.0]])
    label = torch.tensor([[1.0, 0.0]])
    loss = varifocal_loss(pred, gt, label)
    # positive: weight 0.8 * BCE(0.5, 0.8) = 0.8 ln 2; negative: 0.75 * 0.2^2 * -ln(0.8)
    expected = 0.8 * math.log(2) + 0.75 * 0.04 * -math.log(0.8)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # Paddle lets the gradient flow through the weight: d/dp [0.75 p^2 (-ln(1 - p))]
    p = 0.2
    grad_neg = 0.75 * (2 * p * -math.log(1 - p) + p * p / (1 - p))
    assert pred.grad[0, 1].item() == pytest.approx(grad_neg, rel=1e-5)
