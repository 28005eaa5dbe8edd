"""Regions of interest over a registered part (workers/anomaly/roi.py): crops in the reference's
frame, masks, thresholds per region, and a region's own model finding a defect on a moved part."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from workers.anomaly import PredictConfig, RegionConfig, TrainConfig, train
from workers.anomaly.inference import Prediction
from workers.anomaly.roi import RoiSpec, apply_rois, registered_crop, roi_box, rois_at_points

from .conftest import add_defect, save, texture


def _shift(x: float, y: float) -> np.ndarray:
    return np.array([[1, 0, x], [0, 1, y], [0, 0, 1]], np.float64)


def _prediction(score_map: np.ndarray, size: tuple[int, int]) -> Prediction:
    """What the image's own model said: ``score_map`` (calibrated) over an image of ``size``."""
    return Prediction(
        image_path="part.png",
        image_size=size,
        image_score=float(score_map.max()),
        is_anomalous=bool(score_map.max() >= 0.5),
        heatmap=np.zeros(score_map.shape, np.uint8),
        regions=[],
        model_id="m",
        model_kind="padim",
        params={},
        timings={},
        score_map=score_map.astype(np.float32),
    )


def test_registered_crop_recovers_a_known_homography() -> None:
    reference = (texture(200, 240, 1) * 255).astype(np.uint8)
    angle = np.deg2rad(3.0)
    matrix = np.array(
        [
            [np.cos(angle), -np.sin(angle), 12.0],
            [np.sin(angle), np.cos(angle), -7.0],
            [0.0, 0.0, 1.0],
        ]
    )
    image = cv2.warpPerspective(reference, matrix, (260, 220), flags=cv2.INTER_CUBIC)
    box = (60, 50, 160, 140)
    crop = registered_crop(image, matrix, box)
    expected = reference[50:140, 60:160]
    assert crop.shape == expected.shape
    error = np.abs(crop.astype(np.float32) - expected.astype(np.float32))[2:-2, 2:-2]
    assert error.mean() < 4  # grey levels: the same pixels, resampled twice
    assert np.abs(crop.astype(np.float32) - image[50:140, 60:160]).mean() > 4 * error.mean()


def test_roi_box_is_grown_and_kept_inside() -> None:
    assert roi_box([[10, 10], [110, 10], [110, 60]], (100, 120)) == (5, 7, 115, 63)
    assert roi_box([[0, 0], [120, 0], [120, 100]], (100, 120)) == (0, 0, 120, 100)


def _blob(score: np.ndarray, cy: int, cx: int, peak: float) -> None:
    yy, xx = np.mgrid[0 : score.shape[0], 0 : score.shape[1]]
    score[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = peak


def test_excluded_regions_masked_thresholds_per_region_and_suggestions_carry_their_region() -> None:
    # the part moved 20 px right and 10 px down from the reference; the map is at half size
    matrix = _shift(20, 10)
    score = np.zeros((100, 150), np.float32)  # image 200 x 300
    _blob(score, 25, 35, 0.9)  # image (70, 50): reference (50, 40) -> in "cap" (excluded)
    _blob(score, 60, 110, 0.9)  # image (220, 120): reference (200, 110) -> in "label"
    _blob(score, 80, 30, 0.9)  # image (60, 160): outside every region
    rois = [
        RoiSpec(key=1, name="cap", polygon=[[20, 20], [90, 20], [90, 70], [20, 70]], exclude=True),
        RoiSpec(key=2, name="label", polygon=[[160, 80], [250, 80], [250, 140], [160, 140]]),
    ]
    config = PredictConfig(regions=RegionConfig(min_area=16))
    out = apply_rois(_prediction(score, (200, 300)), None, matrix, rois, (200, 300), config)
    found = {
        (r.roi, round(r.box[0] + r.box[2] / 2), round(r.box[1] + r.box[3] / 2)) for r in out.regions
    }
    assert found == {(2, 221, 121), (None, 61, 161)}
    assert out.score_map[20:30, 30:40].max() == 0  # the excluded blob is gone from the map too
    assert out.heatmap[60, 110] == round(0.9 * 255)  # the label region kept, on one scale

    # nothing outside the regions; the label region asks for more than 0.9
    rois[1].threshold = 1.0
    out = apply_rois(
        _prediction(score, (200, 300)), None, matrix, rois, (200, 300), config, outside=False
    )
    assert out.regions == []
    assert out.image_score == pytest.approx(0.45)  # 0.9 scaled by 0.5 / 1.0: below threshold
    assert not out.is_anomalous


def test_a_regions_own_model_finds_a_defect_on_a_moved_part(tmp_path) -> None:
    """Normal parts lie anywhere within 12 px; the region's model is trained on their crops
    registered onto the reference and finds a defect there while the image's model sees none."""
    reference = texture(128, 160, 0)
    box_polygon = [[40, 30], [120, 30], [120, 100], [40, 100]]
    size = (128, 160)
    rng = np.random.default_rng(3)
    crops = []
    for i in range(6):
        dx, dy = rng.integers(-12, 13, size=2)
        matrix = _shift(float(dx), float(dy))
        part = cv2.warpPerspective(
            texture(128, 160, 20 + i), matrix, (160, 128), borderMode=cv2.BORDER_REFLECT
        )
        crop = registered_crop(part, matrix, roi_box(box_polygon, size))
        crops.append(save(crop, tmp_path / f"crop{i}.png"))
    model = train(TrainConfig(model="padim", input_size=64), crops, tmp_path / "model")
    from workers.anomaly import load_model

    loaded = load_model(model.artifact_path)
    matrix = _shift(9.0, -6.0)
    part = cv2.warpPerspective(
        add_defect(reference, 65, 80, 6), matrix, (160, 128), borderMode=cv2.BORDER_REFLECT
    )
    pixels = (part * 255).astype(np.uint8)
    rois = [RoiSpec(key=7, name="face", polygon=box_polygon, model=loaded)]
    nothing = _prediction(np.zeros((128, 160), np.float32), size)
    out = apply_rois(nothing, pixels, matrix, rois, size, PredictConfig())
    assert [r.roi for r in out.regions] == [7]
    x, y, w, h = out.regions[0].box
    assert x <= 80 + 9 <= x + w and y <= 65 - 6 <= y + h  # the defect, in the image's pixels
    assert out.image_score >= 0.5
    assert "face" in out.params["rois"]["own_model_s"]
    # excluded, the same region suggests nothing
    rois[0].exclude = True
    assert apply_rois(nothing, pixels, matrix, rois, size, PredictConfig()).regions == []


@pytest.mark.parametrize("excluded_first", [True, False])
def test_an_excluded_region_stays_masked_under_a_later_region(excluded_first) -> None:
    """'Inspect the whole part, but not its label': the label's mask holds whichever region was
    drawn first; the image score is relative to the place's threshold (0.5 = at it)."""
    score = np.zeros((100, 150), np.float32)
    _blob(score, 50, 75, 0.9)  # in the label
    _blob(score, 20, 20, 0.7)  # elsewhere on the part
    whole = RoiSpec(key=1, name="part", polygon=[[0, 0], [300, 0], [300, 200], [0, 200]])
    label = RoiSpec(
        key=2, name="label", polygon=[[120, 80], [180, 80], [180, 120], [120, 120]], exclude=True
    )
    rois = [label, whole] if excluded_first else [whole, label]
    config = PredictConfig(regions=RegionConfig(min_area=16, threshold=0.6))
    out = apply_rois(_prediction(score, (200, 300)), None, None, rois, (200, 300), config)
    assert [(r.roi, round(r.peak_score, 2)) for r in out.regions] == [(1, 0.7)]
    assert out.image_score == pytest.approx(0.7 * 0.5 / 0.6)  # above the run's 0.6: anomalous
    assert out.is_anomalous


def test_boxes_are_placed_by_their_centres_as_maps_are_masked() -> None:
    """A detector's boxes (by their centres) on a part moved by 30, 20 px and turned 90 degrees:
    masked in the excluded label, whichever region was drawn first; tagged with the region they
    lie in; outside every region kept or not, as the run says."""
    whole = RoiSpec(key=1, name="part", polygon=[[0, 0], [100, 0], [100, 60], [0, 60]])
    label = RoiSpec(key=2, name="label", polygon=[[40, 20], [60, 20], [60, 40], [40, 40]])
    label.exclude = True
    # reference (x, y) -> image (30 + 60 - y, 20 + x): the part turned a quarter and moved
    matrix = _shift(30, 20) @ np.array([[0, -1, 59], [1, 0, 0], [0, 0, 1]], np.float64)
    points = [(89 - y, 20 + x) for x, y in ((10, 10), (50, 30), (150, 30))]  # where they land
    for rois in ([whole, label], [label, whole]):
        assert rois_at_points(points, rois, matrix) == [(True, 1), (False, 2), (True, None)]
        placed = rois_at_points(points, rois, matrix, outside=False)
        assert placed == [(True, 1), (False, 2), (False, None)]
    assert rois_at_points([], [whole], None) == []
    # without a matrix the image is the reference
    assert rois_at_points([[50, 30], [5, 5]], [whole, label], None) == [(False, 2), (True, 1)]
