"""Change heatmap, calibration and regions on synthetic pairs (the Lite0 encoder, one thread)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from workers.anomaly.regions import RegionConfig, extract_regions
from workers.change import (
    ChangeCalibration,
    align,
    change_heatmap,
    fit_calibration,
    warp_reference,
)

from .conftest import board, noisy, paint_defect

pytestmark = pytest.mark.ml

SIZE = (256, 320)  # height, width
SHIFT = np.array([[1, 0, 3.0], [0, 1, -2.0], [0, 0, 1]])


def pair(seed: int, defect: tuple[int, int, int] | None = None):
    """(image, reference): the image is the reference moved by a few pixels, with new noise
    and, if asked, a dark disc (cx, cy, radius) on a light area."""
    reference = board(*SIZE, seed=seed)
    image = cv2.warpPerspective(reference, SHIFT, SIZE[::-1], borderValue=215)
    if defect:
        image = paint_defect(image, *defect, value=40)
    return noisy(image, seed + 100), noisy(reference, seed + 200)


def raw_map(encoder, image, reference):
    alignment = align(image, reference)
    assert alignment.ok, alignment.reason
    warped, valid = warp_reference(reference, alignment, image.shape[:2])
    return change_heatmap(encoder, image, warped, valid), valid


@pytest.fixture(scope="module")
def calibration(encoder) -> ChangeCalibration:
    maps = [raw_map(encoder, *pair(seed))[0] for seed in (20, 21, 22, 23)]
    return fit_calibration(maps)


def test_map_covers_the_image_at_a_quarter_and_is_zero_outside_valid(encoder):
    image, reference = pair(30)
    raw, valid = raw_map(encoder, image, reference)
    assert raw.dtype == np.float32 and raw.shape == (64, 80)
    assert not valid.all()  # the 3 px shift leaves a rim without reference
    assert (raw[:, 0] == 0).all() and (raw[-1, :] == 0).all()  # x + 3, y - 2
    assert raw.max() > 0


def test_inserted_defect_is_the_only_region(encoder, calibration):
    cx, cy = 200, 120
    image, reference = pair(31, defect=(cx, cy, 9))
    raw, _ = raw_map(encoder, image, reference)
    regions = extract_regions(calibration.apply(raw), SIZE, RegionConfig())
    assert len(regions) == 1, [r.box for r in regions]
    x, y, w, h = regions[0].box
    assert x <= cx <= x + w and y <= cy <= y + h
    assert w < 60 and h < 60
    assert regions[0].peak_score > 0.5


def test_unchanged_pair_has_no_region(encoder, calibration):
    image, reference = pair(32)
    raw, _ = raw_map(encoder, image, reference)
    assert extract_regions(calibration.apply(raw), SIZE, RegionConfig()) == []


def test_labelled_changes_are_masked_out_of_the_calibration(encoder, calibration):
    maps, masks = [], []
    for seed in (20, 21, 22, 23):
        cx, cy = 60 + 40 * (seed - 20), 100
        image, reference = pair(seed, defect=(cx, cy, 10))
        maps.append(raw_map(encoder, image, reference)[0])
        mask = np.zeros(SIZE, bool)
        mask[cy - 11 : cy + 12, cx - 11 : cx + 12] = True
        masks.append(mask)
    unmasked = fit_calibration(maps, quantile=0.999)
    masked = fit_calibration(maps, masks, quantile=0.999)
    clean = fit_calibration(
        [raw_map(encoder, *pair(s))[0] for s in (20, 21, 22, 23)], quantile=0.999
    )
    assert masked.threshold < unmasked.threshold
    assert masked.threshold == pytest.approx(clean.threshold, rel=0.35)
    with pytest.raises(ValueError):
        fit_calibration(maps, masks[:2])


def test_tiles_give_the_same_map(encoder):
    image, reference = pair(33, defect=(150, 130, 8))
    alignment = align(image, reference)
    warped, valid = warp_reference(reference, alignment, image.shape[:2])
    whole = change_heatmap(encoder, image, warped, valid, tile=1024)
    tiled = change_heatmap(encoder, image, warped, valid, tile=128)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() < 0.05 * whole.max()


def test_odd_sizes_and_rgb_against_grey(encoder):
    reference = board(150, 203, seed=34)
    image = cv2.cvtColor(paint_defect(reference, 100, 70, 8, value=40), cv2.COLOR_GRAY2RGB)
    valid = np.ones((150, 203), bool)
    raw = change_heatmap(encoder, image, reference, valid)
    assert raw.shape == (38, 51)
    assert np.unravel_index(raw.argmax(), raw.shape) == pytest.approx((70 // 4, 100 // 4), abs=3)


def test_calibration_convention_and_round_trip():
    cal = ChangeCalibration(lo=0.2, threshold=1.0, quantile=0.999)
    out = cal.apply(np.array([0.0, 0.2, 1.0, 1.8, 5.0], np.float32))
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 3.0])
    again = ChangeCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal
    fitted = fit_calibration([np.linspace(0, 1, 10_001, dtype=np.float32).reshape(1, -1)])
    assert fitted.lo == pytest.approx(0.5, abs=1e-3)
    assert fitted.threshold == pytest.approx(0.9998, abs=1e-3)
    assert ChangeCalibration.from_dict(fitted.to_dict()) == fitted


def test_an_identical_pair_calibrates_and_finds_nothing():
    """A reference compared with a lossless copy of itself: every place scores (just above) 0,
    which the calibration must not take for 'not compared'."""
    from workers.change.heatmap import ChangeEncoder, change_heatmap, fit_calibration

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    valid = np.ones(image.shape[:2], bool)
    raw = change_heatmap(ChangeEncoder(), image, image.copy(), valid)
    assert (raw > 0).all()
    calibration = fit_calibration([raw])
    assert calibration.pixels == raw.size
    assert calibration.apply(raw).max() < 0.5  # no region


def test_many_pairs_calibrate_within_a_bounded_sample_each_weighing_the_same():
    """Hundreds of 20 MP pairs are added one at a time and dropped: what stays is at most
    SAMPLES_IN_ALL cells, the same number from each map, and the fit matches the one on every
    cell."""
    from workers.change.heatmap import SAMPLES_IN_ALL, CalibrationSamples

    rng = np.random.default_rng(3)
    maps = [rng.gamma(2.0, 1.0 + 0.01 * i, (400, 500)).astype(np.float32) + 0.01 for i in range(60)]
    samples = CalibrationSamples(len(maps))
    for raw in maps:
        samples.add(raw)
    fitted = samples.fit(0.999)
    assert samples.per_map == SAMPLES_IN_ALL // 60 < 400 * 500
    assert fitted.maps == 60 and fitted.pixels == 60 * samples.per_map <= SAMPLES_IN_ALL
    every = np.concatenate([m.ravel() for m in maps])
    assert fitted.threshold == pytest.approx(float(np.quantile(every, 0.999)), rel=0.02)
    assert fitted.lo == pytest.approx(float(np.median(every)), rel=0.01)
    # a map whose cells are all masked or invalid counts as a map and adds nothing
    samples.add(np.zeros((10, 10), np.float32))
    assert samples.maps == 61 and samples.fit(0.999).pixels == fitted.pixels
