"""Bootstrap intervals of the pixel AUROC, the AU-PRO and the region recall at <= 1 false region
per good image (workers/anomaly/evaluation.py), on synthetic maps whose answer is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from workers.anomaly import metrics
from workers.anomaly.evaluation import (
    _au_pro,
    _pixel_auroc,
    _region_recall,
    bootstrap_tables,
    intervals,
)
from workers.anomaly.regions import Region

pytestmark = pytest.mark.ml

NEW = ("pixel_auroc", "au_pro", "region_recall")


def square(x: int, y: int, size: int, score: float) -> Region:
    poly = [[x, y], [x + size, y], [x + size, y + size], [x, y + size]]
    return Region([x, y, size, size], poly, size * size, score, score)


def synthetic(goods: int, defects: int, seed: int = 0, signal: float = 1.0, side: int = 48):
    """Noisy maps; a defect image has one or two discs lifted by ``signal``, each found by a
    square suggestion with a peak near its lift or missed; good images carry false squares."""
    rng = np.random.default_rng(seed)
    maps, masks, regions, full, per_image = [], [], [], [], []
    for i in range(goods + defects):
        bad = i >= goods
        m = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), 2)
        k = np.zeros((side, side), np.uint8)
        rs = []
        if bad:
            for _ in range(int(rng.integers(1, 3))):
                cy, cx = (int(v) for v in rng.integers(8, side - 8, 2))
                cv2.circle(k, (cx, cy), int(rng.integers(3, 7)), 1, -1)
                if rng.random() < 0.7:  # found, with a peak score around the lift
                    rs.append(square(cx - 2, cy - 2, 4, float(signal + rng.normal(0, 0.3))))
            m[k > 0] += signal * rng.random()
        else:
            for _ in range(int(rng.integers(0, 3))):  # false regions
                x, y = (int(v) for v in rng.integers(0, side - 5, 2))
                rs.append(square(x, y, 4, float(signal * rng.random())))
        k = k > 0
        maps.append(m)
        masks.append(k)
        regions.append(rs)
        full.append(k if bad else None)
        row = {"score": float(m.max()), "anomalous": bad, "regions": len(rs)}
        if bad:
            one = metrics.region_recall([rs], [k], max_false=None)
            row.update(gt_regions=one.gt_regions, hit_regions=one.hit)
        per_image.append(row)
    return maps, masks, regions, full, per_image


def points(maps, masks, regions, full) -> dict:
    return {
        "pixel_auroc": metrics.pixel_auroc(maps, masks),
        "au_pro": metrics.au_pro(maps, masks),
        "region_recall": metrics.region_recall(regions, full).recall,
    }


def test_every_image_once_gives_the_point_estimates():
    """The tallies reproduce the metric functions on the whole set: AU-PRO and region recall
    exactly, pixel AUROC within its binning (pairs in one bin count as ties)."""
    maps, masks, regions, full, _ = synthetic(12, 18)
    tables = bootstrap_tables(maps, masks, regions, full)
    want = points(maps, masks, regions, full)
    ones = np.ones(len(maps))
    assert _au_pro(tables, ones) == pytest.approx(want["au_pro"], abs=1e-9)
    assert _region_recall(tables, ones) == want["region_recall"]
    assert _pixel_auroc(tables, ones) == pytest.approx(want["pixel_auroc"], abs=1e-3)
    # the score cut bites: with no false region allowed fewer are found, as region_recall says
    strict = metrics.region_recall(regions, full, max_false=0.0).recall
    assert _region_recall(tables, ones, max_false=0.0) == strict < want["region_recall"]
    # a resample is the set with images repeated: weight 2 on the first image is a copy of it
    twice = np.ones(len(maps))
    twice[[0, 20]] = 2
    rows = list(range(len(maps))) + [0, 20]
    copy = [[x[i] for i in rows] for x in (maps, masks, regions, full)]
    again = points(*copy)
    assert _au_pro(tables, twice) == pytest.approx(again["au_pro"], abs=0.01)  # own thresholds
    assert _region_recall(tables, twice) == again["region_recall"]
    assert _pixel_auroc(tables, twice) == pytest.approx(again["pixel_auroc"], abs=1e-3)


def test_the_intervals_hold_the_point_estimates_and_shrink_with_more_images():
    few = synthetic(6, 14, seed=1)
    many = synthetic(30, 70, seed=2)
    widths = []
    for maps, masks, regions, full, per_image in (few, many):
        ci = intervals(per_image, bootstrap_tables(maps, masks, regions, full))
        point = points(maps, masks, regions, full)
        for name in NEW:
            lo, hi = ci[name]
            assert lo <= round(point[name], 4) <= hi, (name, ci[name], point[name])
        widths.append({name: ci[name][1] - ci[name][0] for name in NEW})
    for name in NEW:
        assert widths[1][name] < widths[0][name], (name, widths)


def test_perfect_separation_gives_a_point_interval_at_one():
    maps, masks = [], []
    for i in range(8):
        k = np.zeros((32, 32), bool)
        if i % 2:
            k[10:16, 8:20] = True
        maps.append(np.where(k, 2.0, np.linspace(0, 1, 32 * 32).reshape(32, 32)).astype("f4"))
        masks.append(k)
    regions = [[square(8, 10, 6, 2.0)] if i % 2 else [] for i in range(8)]
    full = [k if i % 2 else None for i, k in enumerate(masks)]
    per_image = [
        {"score": 1.0, "anomalous": bool(i % 2), "regions": 1, "gt_regions": 1, "hit_regions": 1}
        for i in range(8)
    ]
    ci = intervals(per_image, bootstrap_tables(maps, masks, regions, full))
    assert metrics.pixel_auroc(maps, masks) == 1.0
    assert ci["pixel_auroc"] == [1.0, 1.0] and ci["region_recall"] == [1.0, 1.0]
    assert ci["au_pro"][1] == pytest.approx(metrics.au_pro(maps, masks), abs=1e-4)


def test_undefined_figures_give_null_not_a_crash():
    maps, masks, regions, full, per_image = synthetic(10, 0)  # no defective image
    ci = intervals(per_image, bootstrap_tables(maps, masks, regions, full))
    assert all(ci[name] is None for name in NEW), ci
    assert ci["image_auroc"] is None and ci["false_per_good_image_at_threshold"] is not None
    # no tables (a caller with image rows only): the new figures are there, as None
    assert all(intervals(per_image)[name] is None for name in NEW)
    # nothing at all
    empty = intervals([], bootstrap_tables([], [], [], []))
    assert set(empty) >= set(NEW) and all(v is None for v in empty.values())
    # defects only, outlined by boxes (no pixel images): region recall, no pixel figures
    maps, masks, regions, full, per_image = synthetic(0, 6, seed=3)
    ci = intervals(per_image, bootstrap_tables([], [], regions, full))
    assert ci["pixel_auroc"] is None and ci["au_pro"] is None
    assert ci["region_recall"] is not None  # no good image: no cut, every suggestion counts
    # a suggestion's polygon partly outside the image, or empty, still counts (or not) as it does
    k = np.zeros((20, 20), bool)
    k[0:4, 0:4] = True
    edge = Region([-3, -3, 6, 6], [[-3, -3], [3, -3], [3, 3], [-3, 3]], 36, 0.9, 0.9)
    empty_poly = Region([0, 0, 0, 0], [], 0, 0.9, 0.9)
    tables = bootstrap_tables([], [], [[edge, empty_poly]], [k])
    assert _region_recall(tables, np.ones(1)) == 1.0


def test_the_image_auroc_interval_is_the_one_sklearn_gives():
    """The image AUROC's resamples are scored without sklearn now: same draws, same figure (equal
    scores count as ties, as ``roc_auc_score`` counts them)."""
    rng = np.random.default_rng(4)
    labels = rng.random(40) < 0.6
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    per_image = [{"score": float(s), "anomalous": bool(a), "regions": 0, "gt_regions": 1,
                  "hit_regions": 0} for s, a in zip(scores, labels, strict=True)]  # fmt: skip
    lo, hi = metrics.bootstrap_interval(
        per_image,
        lambda rows: metrics.image_auroc(
            [r["score"] for r in rows], [r["anomalous"] for r in rows]
        ),
    )
    assert intervals(per_image)["image_auroc"] == [round(lo, 4), round(hi, 4)]
