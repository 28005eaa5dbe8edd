"""``evaluate``: run a model over labelled test images and compute the quality figures."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from annotations.formats import mvtec_layout as layout

from .. import memory
from . import metrics
from .artifact import LoadedModel, load_model
from .config import PredictConfig, ProgressCallback
from .datasets import Sample
from .errors import ImageReadError
from .image_io import read_pixels
from .inference import Prediction, predict


@dataclass
class EvalResult:
    """Quality and speed figures for one model on one labelled test set."""

    metrics: dict
    per_image: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        return {"metrics": self.metrics, "per_image": self.per_image}


def _read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ImageReadError(f"{path}: cannot read mask")
    return mask >= 128


def evaluate(
    model: LoadedModel | str | Path,
    samples: Sequence[Sample],
    config: PredictConfig | None = None,
    progress: ProgressCallback | None = None,
    predictor: Callable[[Path, np.ndarray], Prediction] | None = None,
) -> EvalResult:
    """Predict every sample and compute image AUROC, pixel AUROC, AU-PRO (FPR <= 0.3), region
    recall at <= 1 false region per good image, recall and false regions per good image as
    suggested (at the calibrated threshold), their 95 % bootstrap intervals (``intervals``), and
    timings (ms/image, ms/megapixel, the process's peak RSS).
    ``predictor(path, pixels)``: how each image is predicted instead of ``predict`` (regions of
    interest over a registered part: benchmarks/anomaly_regions.py).
    """
    config = config or PredictConfig()
    progress = progress or (lambda f, m: None)
    if not isinstance(model, LoadedModel):
        model = load_model(model, config.device)
    scores, labels, maps, small_masks, regions, full_masks = [], [], [], [], [], []
    pixel_rows = []  # the sample behind each of ``maps``
    per_image = []
    seconds, megapixels = 0.0, 0.0
    for i, sample in enumerate(samples):
        image = read_pixels(sample.image)  # as predict() reads it
        start = time.perf_counter()
        if predictor is None:
            pred = predict(model, sample.image, config, image=image)
        else:
            pred = predictor(sample.image, image)
        seconds += time.perf_counter() - start
        megapixels += pred.timings["megapixels"]
        mask = (
            _read_mask(sample.mask) if sample.mask is not None else np.zeros(image.shape[:2], bool)
        )
        # the uncapped calibrated map: the 8-bit PNG saturates and would tie strong anomalies
        heat = pred.score_map
        scores.append(pred.image_score)
        labels.append(sample.is_anomalous)
        if not (sample.is_anomalous and sample.outline_only):  # pixels only where marked
            maps.append(heat)
            small_masks.append(metrics.resize_mask(mask, heat.shape))
            pixel_rows.append(i)
        regions.append(pred.regions)
        full_masks.append(mask if sample.is_anomalous else None)
        row = {
            "image": str(sample.image),
            "defect_type": sample.defect_type,
            "anomalous": sample.is_anomalous,
            "score": pred.image_score,
            "regions": len(pred.regions),
        }
        if sample.is_anomalous:  # its ground-truth regions, and those hit as suggested
            one = metrics.region_recall([pred.regions], [mask], max_false=None)
            row.update(gt_regions=one.gt_regions, hit_regions=one.hit)
        per_image.append(row)
        progress((i + 1) / len(samples), f"evaluated {i + 1}/{len(samples)}")
    rstats = metrics.region_recall(regions, full_masks)
    as_suggested = metrics.region_recall(regions, full_masks, max_false=None)
    n = max(1, len(samples))
    result = {
        "images": len(samples),
        "image_auroc": metrics.image_auroc(scores, labels),
        "pixel_auroc": metrics.pixel_auroc(maps, small_masks),
        "au_pro": metrics.au_pro(maps, small_masks),
        # defect images whose pixels are marked (outline-only ones are not in the two above)
        "pixel_defect_images": sum(s.is_anomalous and not s.outline_only for s in samples),
        "region_recall": rstats.recall,
        "region_gt": rstats.gt_regions,
        "region_false_per_good_image": rstats.false_per_normal_image,
        # as suggested, at the calibrated threshold (what calibration decides)
        "recall_at_threshold": as_suggested.recall,
        "false_per_good_image_at_threshold": as_suggested.false_per_normal_image,
        "good_images_flagged": sum(s >= 0.5 for s, a in zip(scores, labels, strict=True) if not a),
        "defect_images_flagged": sum(s >= 0.5 for s, a in zip(scores, labels, strict=True) if a),
        "ms_per_image": 1000 * seconds / n,
        "ms_per_megapixel": 1000 * seconds / max(megapixels, 1e-9),
        "peak_rss_mb": memory.peak_rss_mb(),
    }
    result["by_type"] = figures_by_type(
        [s.defect_type for s in samples], scores, maps, small_masks, pixel_rows, regions, full_masks
    )
    result["intervals"] = intervals(
        per_image, bootstrap_tables(maps, small_masks, regions, full_masks)
    )
    return EvalResult(metrics=result, per_image=per_image)


def figures_by_type(
    types: list[str],
    scores: list[float],
    maps: list[np.ndarray],
    masks: list[np.ndarray],
    pixel_rows: list[int],
    regions: list[list],
    full_masks: list[np.ndarray | None],
) -> dict[str, dict]:
    """Each defect type's figures, its images against every good image: which kinds of defect
    a model finds and which it misses (a whole set's figures can hide a kind it never finds).

    Per type (``types[i]`` of image ``i``; good images are ``layout.GOOD``): its image count, image
    AUROC, pixel AUROC and AU-PRO (over its images with pixel masks, ``pixel_rows`` being the
    image of each of ``maps``/``masks``; None without any, NaN where their masks are empty),
    its ground-truth regions, the
    share of them hit at <= 1 false region per good image and as suggested. Every good image is
    in each type's subset, so the region score cut is the whole set's: the type's share of the
    hits the whole set's ``region_recall`` counts.
    """
    good = {i for i, t in enumerate(types) if t == layout.GOOD}
    out: dict[str, dict] = {}
    for kind in sorted(set(types) - {layout.GOOD}):
        members = good | {i for i, t in enumerate(types) if t == kind}
        rows = sorted(members)
        pixels = [j for j, i in enumerate(pixel_rows) if i in members]
        pixel_figures: dict[str, float | None] = {"pixel_auroc": None, "au_pro": None}
        if any(types[pixel_rows[j]] == kind for j in pixels):
            sub_maps, sub_masks = [maps[j] for j in pixels], [masks[j] for j in pixels]
            pixel_figures = {
                "pixel_auroc": metrics.pixel_auroc(sub_maps, sub_masks),
                "au_pro": metrics.au_pro(sub_maps, sub_masks),
            }
        sub_regions, sub_full = [regions[i] for i in rows], [full_masks[i] for i in rows]
        at_cut = metrics.region_recall(sub_regions, sub_full)
        out[kind] = {
            "images": len(rows) - len(good),
            "image_auroc": metrics.image_auroc(
                [scores[i] for i in rows], [types[i] != layout.GOOD for i in rows]
            ),
            **pixel_figures,
            "regions": at_cut.gt_regions,
            "region_recall": at_cut.recall,
            "recall_at_threshold": metrics.region_recall(
                sub_regions, sub_full, max_false=None
            ).recall,
        }
    return out


# pixel AUROC over a resample: per-image histograms over this many bins per class (edges at the
# quantiles of the defect-free pixels and, as many again, of the defect pixels, each taken on at
# most 500 000 of them)
PIXEL_BINS = 1024


@dataclass
class BootstrapTables:
    """What the pixel and region figures of any resample of the test images follow from, without
    going back to the maps: per-image tallies, computed once (:func:`bootstrap_tables`).

    Pixel rows are the images with pixel ground truth (the maps of ``pixel_auroc``/``au_pro``,
    in their order); region rows are every image (``per_image``'s order)."""

    # pixel AUROC: per pixel image, its defect-free and defect pixels per score bin
    normal_hist: np.ndarray  # (pixel images, bins)
    defect_hist: np.ndarray  # (pixel images, bins)
    # AU-PRO at the thresholds ``metrics.au_pro`` takes on the whole set
    thresholds: np.ndarray  # (T,) descending
    normal_total: np.ndarray  # (pixel images,) defect-free pixels
    normal_below: np.ndarray  # (pixel images, T) defect-free pixels below each threshold
    component_image: np.ndarray  # (components,) the pixel image of each ground-truth component
    component_above: np.ndarray  # (components, T) its share of pixels at or above each threshold
    # region recall at <= 1 false region per good image
    good_peaks: np.ndarray  # (false regions,) peak scores of the good images' regions, descending
    good_peak_image: np.ndarray  # (false regions,) the image of each
    good_image: np.ndarray  # (images,) bool: a good image
    region_image: np.ndarray  # (ground-truth regions,) the image of each
    region_best: np.ndarray  # (ground-truth regions,) the highest peak among the suggestions
    # that touch it (-inf: none): it is hit at any score cut up to that


def bootstrap_tables(
    maps: list[np.ndarray],
    masks: list[np.ndarray],
    regions: list[list] | None = None,
    full_masks: list[np.ndarray | None] | None = None,
    bins: int = PIXEL_BINS,
    steps: int = 200,
) -> BootstrapTables:
    """Per-image tallies for :func:`intervals`: ``maps``/``masks`` as given to
    ``metrics.pixel_auroc``/``au_pro``, ``regions``/``full_masks`` as to
    ``metrics.region_recall`` (None: no region figure)."""
    k = len(maps)
    if k:
        pooled = np.concatenate([m.ravel() for m in maps])
        thresholds = metrics.pro_thresholds(pooled, steps)
        defect = np.concatenate([km.ravel() for km in masks]).astype(bool)
        q = np.linspace(0, 1, bins + 1)
        parts = [np.zeros(1)]
        for values in (pooled[~defect], pooled[defect]):
            if values.size:  # quantiles of every n-th value (the edges need not be exact), and
                # each class's extremes: where the classes separate, a bin holds only one
                step = -(-values.size // 500_000)
                parts += [np.quantile(values[::step], q), [values.min(), values.max()]]
        edges = np.unique(np.concatenate(parts[1:] or parts))
        del pooled, defect
    else:
        thresholds, edges = np.zeros(0), np.zeros(1)
    n_bins = edges.size + 1
    normal_hist = np.zeros((k, n_bins))
    defect_hist = np.zeros((k, n_bins))
    normal_total = np.zeros(k)
    normal_below = np.zeros((k, thresholds.size))
    component_image, component_above = [], []
    for i, (m, km) in enumerate(zip(maps, masks, strict=True)):
        km = km.astype(bool)
        # a score equal to an edge goes above it: bins split classes exactly where they part
        where = np.searchsorted(edges, m.ravel(), side="right")
        normal_hist[i] = np.bincount(where[~km.ravel()], minlength=n_bins)
        defect_hist[i] = np.bincount(where[km.ravel()], minlength=n_bins)
        normal = np.sort(m[~km])
        normal_total[i] = normal.size
        normal_below[i] = np.searchsorted(normal, thresholds, side="left")
        count, labels = cv2.connectedComponents(km.astype(np.uint8))
        if count > 1:
            inside = labels.ravel() > 0
            lab, val = labels.ravel()[inside], m.ravel()[inside]
            order = np.lexsort((val, lab))
            lab, val = lab[order], val[order]
            starts = np.searchsorted(lab, np.arange(1, count + 1))
            for c in range(count - 1):
                comp = val[starts[c] : starts[c + 1]]
                below = np.searchsorted(comp, thresholds, side="left")
                component_image.append(i)
                component_above.append(1.0 - below / comp.size)

    peaks, peak_image, region_image, region_best = [], [], [], []
    good = np.zeros(0, bool)
    if regions is not None and full_masks is not None:
        good = np.array([km is None for km in full_masks], bool)
        for i, (rs, km) in enumerate(zip(regions, full_masks, strict=True)):
            if km is None:
                peaks += [r.peak_score for r in rs]
                peak_image += [i] * len(rs)
                continue
            best = _best_touching_peak(rs, km)
            region_image += [i] * best.size
            region_best += best.tolist()
    order = np.argsort(-np.asarray(peaks, float), kind="stable")
    return BootstrapTables(
        normal_hist=normal_hist,
        defect_hist=defect_hist,
        thresholds=thresholds,
        normal_total=normal_total,
        normal_below=normal_below,
        component_image=np.asarray(component_image, int),
        component_above=np.asarray(component_above, float).reshape(
            len(component_above), thresholds.size
        ),
        good_peaks=np.asarray(peaks, float)[order],
        good_peak_image=np.asarray(peak_image, int)[order],
        good_image=good,
        region_image=np.asarray(region_image, int),
        region_best=np.asarray(region_best, float),
    )


def _best_touching_peak(regions: list, mask: np.ndarray) -> np.ndarray:
    """Per ground-truth component of ``mask`` (``metrics.region_recall``'s), the highest peak
    score of the suggestions whose polygon covers one of its pixels (-inf: none)."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8))
    best = np.full(count - 1, -np.inf)
    h, w = labels.shape
    for r in regions:
        poly = np.round(np.asarray(r.polygon, np.float64)).astype(np.int32).reshape(-1, 2)
        if not poly.size:
            continue
        x0, y0 = np.maximum(poly.min(0), 0)
        x1, y1 = np.minimum(poly.max(0) + 1, (w, h))
        if x1 <= x0 or y1 <= y0:
            continue
        covered = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(covered, [poly - np.array([x0, y0], np.int32)], 1)
        touched = np.unique(labels[y0:y1, x0:x1][covered > 0])
        touched = touched[touched > 0] - 1
        best[touched] = np.maximum(best[touched], r.peak_score)
    return best


def _binned_auroc(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """ROC AUC from negatives and positives counted per score bin (ascending); pairs in one bin
    count as ties (as ``roc_auc_score`` counts equal scores). None without both classes."""
    n, p = neg.sum(), pos.sum()
    if n == 0 or p == 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos @ below + 0.5 * pos @ neg) / (n * p))


def _pixel_auroc(t: BootstrapTables, w: np.ndarray) -> float | None:
    """Pixel ROC AUC from the weighted per-image histograms."""
    return _binned_auroc(w @ t.normal_hist, w @ t.defect_hist)


def _au_pro(t: BootstrapTables, w: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """``metrics.au_pro`` from the weighted tallies, at the whole set's thresholds."""
    wc = w[t.component_image]
    if not wc.sum():
        return None
    fprs = 1.0 - (w @ t.normal_below) / max(1.0, w @ t.normal_total)
    pros = (wc @ t.component_above) / wc.sum()
    return metrics.pro_area(fprs, pros, fpr_limit)  # as metrics.au_pro integrates it


def _region_recall(t: BootstrapTables, w: np.ndarray, max_false: float = 1.0) -> float | None:
    """``metrics.region_recall(...).recall`` at <= ``max_false`` false regions per good image,
    for images weighted by ``w`` (how often a resample drew each)."""
    wr = w[t.region_image]
    if not wr.sum():
        return None
    allowed = int(np.floor(max_false * w[t.good_image].sum()))
    drawn = np.cumsum(w[t.good_peak_image])  # the good images' peaks, highest first, repeated
    cut = -np.inf
    if drawn.size and drawn[-1] > allowed:  # just above the (allowed+1)-th highest false peak
        cut = t.good_peaks[np.searchsorted(drawn, allowed, side="right")] + 1e-9
    hit = (t.region_best >= cut) & (t.region_best > -np.inf)  # -inf: no suggestion touches it
    return float(wr[hit].sum() / wr.sum())


def intervals(per_image: list[dict], tables: BootstrapTables | None = None) -> dict:
    """95 % percentile bootstrap intervals (1000 resamples of the images, seed 0) of the image
    AUROC, the recall and false regions per good image as suggested and, from ``tables``
    (:func:`bootstrap_tables`; without them these are None), the pixel AUROC, the AU-PRO and
    the region recall at <= 1 false region per good image (``[lo, hi]``, None where undefined).

    Image AUROC and region recall at <= 1 false region resample every image; pixel AUROC and
    AU-PRO the images with pixel ground truth; recall as suggested the defect images and false
    regions per good image the good ones. Each resample's pixel AUROC comes from per-image
    histograms of the pixel scores (:data:`PIXEL_BINS` bins per class), so a defect and a normal
    pixel in one bin count as a tie (the point estimate is ``metrics.pixel_auroc``'s, unchanged);
    its AU-PRO is ``metrics.au_pro`` at the whole set's 200 thresholds; its region recall is
    ``metrics.region_recall``'s, score cut included, exactly."""

    # image AUROC: each distinct score its own bin, so ``metrics.image_auroc`` exactly, without
    # sklearn's overhead on each of the 1000 resamples
    scores = np.asarray([r["score"] for r in per_image], float)
    anomalous = np.asarray([bool(r["anomalous"]) for r in per_image], float)
    distinct, which = np.unique(scores, return_inverse=True)

    def auroc(rows):
        w = np.bincount(rows, minlength=len(per_image)).astype(float)
        pos = np.bincount(which, weights=w * anomalous, minlength=distinct.size)
        return _binned_auroc(np.bincount(which, weights=w, minlength=distinct.size) - pos, pos)

    def recall(rows):
        gt = sum(r["gt_regions"] for r in rows)
        return sum(r["hit_regions"] for r in rows) / gt if gt else None

    def false_per_good(rows):
        return sum(r["regions"] for r in rows) / len(rows)

    def weighted(figure, size):  # a statistic over resampled image indices
        return lambda rows: figure(tables, np.bincount(rows, minlength=size).astype(float))

    defects = [r for r in per_image if r["anomalous"]]
    goods = [r for r in per_image if not r["anomalous"]]
    out = {
        "image_auroc": metrics.bootstrap_interval(list(range(len(per_image))), auroc),
        "pixel_auroc": None,
        "au_pro": None,
        "region_recall": None,
        "recall_at_threshold": metrics.bootstrap_interval(defects, recall),
        "false_per_good_image_at_threshold": metrics.bootstrap_interval(goods, false_per_good),
    }
    if tables is not None:
        pixel_images = list(range(len(tables.normal_total)))
        out["pixel_auroc"] = metrics.bootstrap_interval(
            pixel_images, weighted(_pixel_auroc, len(pixel_images))
        )
        out["au_pro"] = metrics.bootstrap_interval(
            pixel_images, weighted(_au_pro, len(pixel_images))
        )
        if tables.good_image.size:
            every = list(range(tables.good_image.size))
            out["region_recall"] = metrics.bootstrap_interval(
                every, weighted(_region_recall, len(every))
            )
    return {k: [round(v[0], 4), round(v[1], 4)] if v else None for k, v in out.items()}
