"""Image AUROC, pixel AUROC, AU-PRO and region recall, from predictions and masks.

All maps are compared at the heatmap's (reduced) resolution; masks are resized to it with area
averaging and re-binarised at 0.5, so a thin defect is not lost by nearest-neighbour sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from .regions import Region


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Binary mask resized to ``shape`` (h, w)."""
    if mask.shape == shape:
        return mask > 0
    small = cv2.resize((mask > 0).astype(np.float32), shape[::-1], interpolation=cv2.INTER_AREA)
    return small >= 0.5 if small.max() >= 0.5 else small > 0


def image_auroc(scores: list[float], labels: list[bool]) -> float | None:
    """ROC AUC of image scores; None when only one class is present."""
    if len(set(labels)) < 2:
        return None
    return float(roc_auc_score(np.asarray(labels, int), np.asarray(scores)))


def pixel_auroc(maps: list[np.ndarray], masks: list[np.ndarray], limit: int = 4_000_000) -> float:
    """ROC AUC over all pixels of all images (subsampled to ``limit`` pixels)."""
    scores = np.concatenate([m.ravel() for m in maps]).astype(np.float32)
    labels = np.concatenate([k.ravel() for k in masks]).astype(np.uint8)
    if scores.size > limit:
        idx = np.random.default_rng(0).choice(scores.size, limit, replace=False)
        scores, labels = scores[idx], labels[idx]
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def au_pro(
    maps: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float = 0.3, steps: int = 200
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1].

    PRO at a threshold is the mean, over ground-truth connected components, of the share of the
    component's pixels above the threshold; FPR is over all defect-free pixels.
    """
    scores = np.concatenate([m.ravel() for m in maps])
    normal = np.concatenate([(~k).ravel() for k in masks])
    thresholds = pro_thresholds(scores, steps)
    # each ground-truth component's share of pixels at or above each threshold
    above = []
    for m, k in zip(maps, masks, strict=True):
        count, labels = cv2.connectedComponents(k.astype(np.uint8))
        for i in range(1, count):
            c = np.sort(m[labels == i])
            above.append((c.size - np.searchsorted(c, thresholds, side="left")) / c.size)
    if not above:
        return float("nan")
    normal_scores = np.sort(scores[normal])
    # every threshold in one call: one at a time, numpy casts the whole float32 array to the
    # float64 threshold's type on each call (9 of 13 s on 56 MP of maps:
    # benchmarks/evaluation_cost.py)
    below = np.searchsorted(normal_scores, thresholds, side="left")
    fprs = 1.0 - below / max(1, normal_scores.size)
    per_threshold = np.ascontiguousarray(np.stack(above).T)  # (T, components)
    pros = np.asarray([float(np.mean(row)) for row in per_threshold])
    return pro_area(fprs, pros, fpr_limit)


def pro_thresholds(scores: np.ndarray, steps: int = 200) -> np.ndarray:
    """AU-PRO's thresholds, descending: the ``steps`` quantiles of every score, without repeats
    (:func:`au_pro` and the bootstrap's tables take the same). Quantiles of the sorted scores,
    the same values, twice as fast: numpy sorts faster than it partitions at 400 places."""
    ordered = np.sort(scores)
    return np.unique(np.quantile(ordered, np.linspace(0, 1, steps), overwrite_input=True))[::-1]


def pro_area(fprs: np.ndarray, pros: np.ndarray, fpr_limit: float = 0.3) -> float:
    """The area under PRO over FPR up to ``fpr_limit``, normalised to [0, 1] (the points in
    any order; 0.0 with fewer than two at or below the limit)."""
    order = np.argsort(fprs)
    fprs, pros = fprs[order], pros[order]
    keep = fprs <= fpr_limit
    if keep.sum() < 2:
        return 0.0
    x = np.append(fprs[keep], fpr_limit)
    y = np.append(pros[keep], np.interp(fpr_limit, fprs, pros))
    return float(np.trapezoid(y, x) / fpr_limit)


@dataclass
class RegionStats:
    """Region recall at the score cut that allows at most ``max_false`` regions per normal image."""

    recall: float
    score_cut: float
    gt_regions: int
    hit: int
    false_per_normal_image: float


def region_recall(
    regions: list[list[Region]],
    masks: list[np.ndarray | None],
    max_false: float | None = 1.0,
) -> RegionStats:
    """Share of ground-truth regions hit by a suggestion, with <= ``max_false`` per good image.

    ``masks`` are full-resolution boolean masks, None for good images. A ground-truth component
    is hit when a suggestion's polygon covers at least one of its pixels. The score cut is the
    lowest region peak score at which good images carry at most ``max_false`` regions on average;
    ``None``: no cut, every region as suggested (the model's calibrated threshold decides).
    """
    normal_peaks = sorted(
        (r.peak_score for rs, m in zip(regions, masks, strict=True) if m is None for r in rs),
        reverse=True,
    )
    n_normal = sum(1 for m in masks if m is None)
    cut = -np.inf
    if max_false is not None:
        allowed = int(np.floor(max_false * n_normal))
        if len(normal_peaks) > allowed:  # cut just above the (allowed+1)-th highest false peak
            cut = normal_peaks[allowed] + 1e-9
    gt, hit = 0, 0
    for rs, m in zip(regions, masks, strict=True):
        if m is None:
            continue
        count, labels = cv2.connectedComponents(m.astype(np.uint8))
        gt += count - 1
        covered = np.zeros(m.shape, np.uint8)
        for r in rs:
            if r.peak_score < cut:
                continue
            poly = np.round(np.asarray(r.polygon)).astype(np.int32)
            cv2.fillPoly(covered, [poly], 1)
        hit += sum(1 for i in range(1, count) if covered[labels == i].any())
    kept_false = sum(1 for p in normal_peaks if p >= cut)
    return RegionStats(
        recall=hit / gt if gt else float("nan"),
        score_cut=float(cut),
        gt_regions=gt,
        hit=hit,
        false_per_normal_image=kept_false / n_normal if n_normal else float("nan"),
    )


def bootstrap_interval(
    items: Sequence, statistic: Callable[[list], float], n: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % percentile bootstrap interval of ``statistic`` over ``items`` resampled with
    replacement (resamples where it is undefined, NaN or None, are left out); None without
    items or when no resample defines it."""
    if not items:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        value = statistic([items[i] for i in rng.integers(len(items), size=len(items))])
        if value is not None and np.isfinite(value):
            values.append(value)
    if not values:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)
