"""``evaluate``: run a model over labelled test images and compute the quality figures."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

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
    suggested (at the calibrated threshold), and timings (ms/image, ms/megapixel, peak RSS).
    ``predictor(path, pixels)``: how each image is predicted instead of ``predict`` (regions of
    interest over a registered part: benchmarks/anomaly_regions.py).
    """
    config = config or PredictConfig()
    progress = progress or (lambda f, m: None)
    if not isinstance(model, LoadedModel):
        model = load_model(model, config.device)
    scores, labels, maps, small_masks, regions, full_masks = [], [], [], [], [], []
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
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    result["intervals"] = intervals(per_image)
    return EvalResult(metrics=result, per_image=per_image)


def intervals(per_image: list[dict]) -> dict:
    """95 % bootstrap intervals over the images (1000 resamples) of the image AUROC, the recall
    as suggested and the false regions per good image (``[lo, hi]``, None where undefined)."""

    def auroc(rows):
        return metrics.image_auroc([r["score"] for r in rows], [r["anomalous"] for r in rows])

    def recall(rows):
        gt = sum(r["gt_regions"] for r in rows)
        return sum(r["hit_regions"] for r in rows) / gt if gt else None

    def false_per_good(rows):
        return sum(r["regions"] for r in rows) / len(rows)

    defects = [r for r in per_image if r["anomalous"]]
    goods = [r for r in per_image if not r["anomalous"]]
    out = {
        "image_auroc": metrics.bootstrap_interval(per_image, auroc),
        "recall_at_threshold": metrics.bootstrap_interval(defects, recall),
        "false_per_good_image_at_threshold": metrics.bootstrap_interval(goods, false_per_good),
    }
    return {k: [round(v[0], 4), round(v[1], 4)] if v else None for k, v in out.items()}
