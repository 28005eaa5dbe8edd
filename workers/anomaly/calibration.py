"""Thresholds from normal images: what makes a model's scores comparable (0.5 = threshold).

The rules and the reasons for them are in docs/anomaly.md, "Calibration"; scores are then
mapped by :func:`~workers.anomaly.inference.normalise`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifact import LoadedModel
from .config import PredictConfig, ProgressCallback
from .image_io import read_pixels
from .inference import raw_heatmap


def calibrate(
    model: LoadedModel,
    paths: list[Path],
    quantile: float,
    progress: ProgressCallback,
    peak_floor: bool = False,
) -> dict:
    """Pixel and image thresholds from normal images (held out from training when possible).

    ``peak_floor``: the pixel threshold is at least the median of the images' maxima (tiled
    models, and the whole-image pass that joins a tiled model's map)."""
    pixels, image_scores = [], []
    config = PredictConfig()
    rng = np.random.default_rng(0)
    for i, p in enumerate(paths):
        raw = raw_heatmap(model, read_pixels(p), config)
        flat = raw.ravel()
        if flat.size > 200_000:
            flat = rng.choice(flat, 200_000, replace=False)
        pixels.append(flat)
        image_scores.append(float(raw.max()))
        progress((i + 1) / len(paths), f"calibration {i + 1}/{len(paths)}")
    allpix = np.concatenate(pixels)
    scores = np.asarray(image_scores)
    pixel_lo = float(np.median(allpix))
    pixel_thr = float(np.quantile(allpix, quantile))
    image_lo = float(np.median(scores))
    image_thr = float(scores.max())
    rule, quantile_thr = "quantile", pixel_thr
    if peak_floor and image_lo > pixel_thr:
        # A pixel quantile is not a rate of false regions on large images: it leaves a fixed
        # share of every normal map above the threshold (thousands of pixels at 20 MP). The
        # threshold must reach the peak of a typical normal image (the median of the maxima)
        # so that such an image shows no region (figures: docs/anomaly.md, "Calibration").
        pixel_thr, rule = image_lo, "median of normal images' maxima"
    if image_thr - image_lo < 0.05 * abs(image_thr):
        # one image (or identical scores): the max alone says nothing about the spread
        image_lo = image_thr - 0.05 * abs(image_thr) - 1e-9
    return {
        "pixel_lo": pixel_lo,
        "pixel_threshold": pixel_thr,
        "image_lo": image_lo,
        "image_threshold": image_thr,
        "pixel_quantile": quantile,
        "pixel_threshold_rule": rule,
        "pixel_quantile_threshold": quantile_thr,
        "images": len(paths),
    }
