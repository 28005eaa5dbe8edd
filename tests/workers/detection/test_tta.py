"""Test-time augmentation (``workers.detection.tta``): views, boxes turned back, fusion."""

from __future__ import annotations

import numpy as np
import pytest

from workers.detection import evaluate, load_detector, predict_views
from workers.detection.inference import Detection
from workers.detection.tta import VIEWS, boxes_back, fuse, view_image

from .conftest import BACKGROUND, COLOURS

pytestmark = pytest.mark.ml


def test_every_view_is_distinct_and_its_boxes_come_back() -> None:
    """A box found where a view shows the square maps back onto the square in the original,
    for all eight orientations of a non-square image."""
    image = np.zeros((40, 60), np.uint8)
    image[5:15, 20:32] = 1
    image[30:36, 50:58] = 2  # makes every orientation distinct
    seen = set()
    for view in VIEWS[8]:
        shown = view_image(image, view)
        seen.add(shown.tobytes())
        ys, xs = np.nonzero(shown == 1)
        found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]])
        assert boxes_back(found, view, 40, 60).tolist() == [[20, 5, 32, 15]], view
    assert len(seen) == 8
    assert [len(VIEWS[n]) for n in (1, 2, 4, 8)] == [1, 2, 4, 8]


def det(x1: float, score: float, category: int = 1, width: float = 10) -> Detection:
    return Detection(x1, 0.0, x1 + width, 10.0, score, category, f"c{category}", 0.1)


def test_fusion_averages_overlapping_boxes_weighted_by_score() -> None:
    """Four views: a defect found in all four gives one box at the score-weighted mean with
    the mean score; one found in a single view keeps a quarter of its score; another category
    at the same place stays apart; ``nms`` keeps the best box as scored."""
    views = [
        [det(0, 0.8), det(100, 0.4)],
        [det(2, 0.4)],
        [det(0, 0.8)],
        [det(0, 0.8), det(1, 0.6, 2)],
    ]
    fused = fuse(views, "wbf")
    assert len(fused) == 3
    a = fused[0]
    assert a.category_id == 1 and a.score == pytest.approx((0.8 * 3 + 0.4) / 4)
    assert a.x1 == pytest.approx((0.8 * 0 * 3 + 0.4 * 2) / 2.8)
    assert a.second_score == pytest.approx(0.1)
    lone = [d for d in fused if d.x1 == 100]
    assert len(lone) == 1 and lone[0].score == pytest.approx(0.1)
    other = [d for d in fused if d.category_id == 2]
    assert len(other) == 1 and other[0].score == pytest.approx(0.15)
    kept = fuse(views, "nms")
    assert sorted((d.x1, d.score, d.category_id) for d in kept) == [
        (0, 0.8, 1),
        (1, 0.6, 2),
        (100, 0.4, 1),
    ]
    assert fuse([[], []]) == []
    with pytest.raises(ValueError, match="fusion"):
        fuse(views, "mean")


def test_a_trained_detector_finds_the_squares_in_every_view(trained: dict) -> None:
    """The tiny trained detector through ``predict_views``: one view is the plain call, and
    four views find each square once, where it is, with its colour's category."""
    detector = load_detector(trained["path"], runtime="torch")
    image = np.full((128, 128, 3), BACKGROUND, np.uint8)
    squares = [(20, 30, 18, 0), (80, 70, 20, 1)]  # x, y, side, class index
    for x, y, s, c in squares:
        image[y : y + s, x : x + s] = COLOURS[c]
    plain = detector.predict_sliced(image, slice_size=128, score_threshold=0.3)
    one = predict_views(detector.predict_sliced, image, 1, slice_size=128, score_threshold=0.3)
    assert [(d.x1, d.score) for d in one] == [(d.x1, d.score) for d in plain]
    four = predict_views(detector.predict_sliced, image, 4, slice_size=128, score_threshold=0.3)
    for x, y, s, c in squares:
        hits = [d for d in four if abs(d.x1 - x) < 4 and abs(d.y1 - y) < 4 and d.score >= 0.3]
        assert len(hits) == 1, (x, y, four)
        assert abs(hits[0].x2 - (x + s)) < 4 and abs(hits[0].y2 - (y + s)) < 4
        assert hits[0].category_id == c + 1
    with pytest.raises(ValueError, match="views"):
        predict_views(detector.predict_sliced, image, 3)


def test_evaluation_with_views(trained: dict) -> None:
    detector = load_detector(trained["path"], runtime="torch")
    one = evaluate(detector, trained["coco"], slice_size=128)
    two = evaluate(detector, trained["coco"], slice_size=128, views=2)
    assert one.map50 > 0.5 and two.map50 > 0.5  # the set it was trained on
    assert two.map50 != one.map50 or two.map != one.map  # the mirror views changed the boxes
