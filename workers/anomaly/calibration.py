"""Thresholds from normal images: what makes a model's scores comparable (0.5 = threshold).

Both thresholds come from the distribution of the held-out normal images' maxima (an image's
highest raw pixel score), fitted as an extreme-value (Gumbel) distribution by its median and
median absolute deviation: a few normal images unlike the rest (brighter, darker, another batch)
move neither, where the old rules (the maximum of the maxima, and a quantile of all pixels
pooled) were set by those few alone. The rules, the reasons and the figures are in
docs/anomaly.md, "Calibration"; scores are then mapped by
:func:`~workers.anomaly.inference.normalise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .artifact import LoadedModel
from .config import PredictConfig, ProgressCallback
from .image_io import read_pixels
from .inference import normalise, raw_heatmap

# The standard Gumbel distribution's median, -ln(ln 2), and its median absolute deviation (the
# d with F(median + d) - F(median - d) = 1/2 for F(x) = exp(-exp(-x)), solved numerically).
GUMBEL_MEDIAN = -math.log(math.log(2.0))
GUMBEL_MAD = 0.7670492513257082
# With fewer than 3 held-out images, or maxima that do not differ, the spread says nothing:
# it is taken as this share of the median maximum instead.
MIN_SPREAD = 0.02
# A held-out maximum beyond the fit's (1 - OUTLIER_P / n) quantile (n held-out images) is unlike
# the rest: it does not raise the image threshold (below).
OUTLIER_P = 0.01
# Maxima kept in the artifact for the models page's histogram (a sample when there are more).
KEPT_MAXIMA = 500
# The calibrated thresholds (0.5 = the pixel threshold) at which the expected share of normal
# images with a suggestion is tabulated for the models page: 0.05, 0.10, ... 5.00.
SHARE_GRID = tuple(round(0.05 * i, 2) for i in range(1, 101))


def fit_maxima(maxima: np.ndarray) -> tuple[float, float]:
    """Gumbel location and scale ``(mu, beta)`` of normal images' maxima, from their median and
    median absolute deviation (robust: up to half the images may be unlike the rest)."""
    maxima = np.asarray(maxima, dtype=np.float64)
    median = float(np.median(maxima))
    mad = float(np.median(np.abs(maxima - median)))
    beta = mad / GUMBEL_MAD
    if len(maxima) < 3 or beta < MIN_SPREAD * abs(median) / 4:
        beta = max(beta, MIN_SPREAD * abs(median), 1e-9)
    return median - GUMBEL_MEDIAN * beta, beta


def gumbel_quantile(mu: float, beta: float, p: float) -> float:
    """The raw score below which a share ``p`` of normal images' maxima lies."""
    return mu - beta * math.log(-math.log(p))


def share_above(mu: float, beta: float, raw: float) -> float:
    """The expected share of normal images whose maximum reaches ``raw``."""
    return 1.0 - math.exp(-math.exp(-(raw - mu) / beta))


def thresholds_from_maxima(
    maxima: np.ndarray, suggest_rate: float, flag_rate: float
) -> tuple[float, float, float, float, int]:
    """``(mu, beta, pixel_threshold, image_threshold, unlike)`` from held-out normal images'
    maxima (raw units); ``unlike``: how many of them the fit calls unlike the rest. The rules are
    :func:`calibrate`'s."""
    maxima = np.asarray(maxima, dtype=np.float64)
    mu, beta = fit_maxima(maxima)
    pixel_thr = gumbel_quantile(mu, beta, 1.0 - suggest_rate)
    limit = gumbel_quantile(mu, beta, 1.0 - OUTLIER_P / len(maxima))
    typical = maxima[maxima <= limit]  # never empty: the median is below the limit
    image_thr = max(gumbel_quantile(mu, beta, 1.0 - flag_rate), float(typical.max()), pixel_thr)
    return mu, beta, pixel_thr, image_thr, int(maxima.size - typical.size)


def calibrate(
    model: LoadedModel,
    paths: list[Path],
    suggest_rate: float,
    flag_rate: float,
    progress: ProgressCallback,
    pixel_quantile: float = 0.999,
    raw_map: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Pixel and image thresholds from normal images (held out from training when possible).

    ``pixel_threshold`` (where regions start, hence suggestions) is the raw score that a share
    ``suggest_rate`` of normal images' maxima is expected to reach. ``image_threshold`` (the
    verdict, ``is_anomalous``: what stops a part at a station) is the one a share ``flag_rate``
    reaches, and at least every held-out maximum that the fit does not call unlike the rest: a
    few held-out images estimate the tail poorly (four bottles put the 5 % point below an
    ordinary held-out bottle that unseen ones then crossed), and a false NG costs more than a
    false suggestion.
    ``pixel_quantile`` of all normal pixels pooled is recorded beside them
    (``pixel_quantile_threshold``: the rule before this one, for comparisons).
    ``raw_map(image)``: the map calibrated, when it is not the model's own network map (a model
    with its line detector: :func:`~.inference.line_parts`)."""
    pixels, image_scores = [], []
    config = PredictConfig()
    rng = np.random.default_rng(0)
    for i, p in enumerate(paths):
        image = read_pixels(p)
        raw = raw_heatmap(model, image, config) if raw_map is None else raw_map(image)
        flat = raw.ravel()
        if flat.size > 200_000:
            flat = rng.choice(flat, 200_000, replace=False)
        pixels.append(flat)
        image_scores.append(float(raw.max()))
        progress((i + 1) / len(paths), f"calibration {i + 1}/{len(paths)}")
    allpix = np.concatenate(pixels)
    maxima = np.asarray(image_scores)
    mu, beta, pixel_thr, image_thr, unlike = thresholds_from_maxima(maxima, suggest_rate, flag_rate)
    pixel_lo = float(np.median(allpix))
    if pixel_lo >= pixel_thr:  # a map flat at its maximum: keep the scale's direction
        pixel_lo = pixel_thr - beta
    image_lo = float(np.median(maxima))
    if image_lo >= image_thr:
        image_lo = image_thr - beta
    kept = np.sort(maxima if maxima.size <= KEPT_MAXIMA else rng.choice(maxima, KEPT_MAXIMA, False))
    # a region threshold t (the project's "score from") in raw units, as regions.py applies it
    span = pixel_thr - pixel_lo
    expected = [
        [t, round(share_above(mu, beta, pixel_thr + (t - 0.5) * 2 * span), 5)] for t in SHARE_GRID
    ]
    return {
        "pixel_lo": pixel_lo,
        "pixel_threshold": pixel_thr,
        "image_lo": image_lo,
        "image_threshold": image_thr,
        "rule": "gumbel fit of normal images' maxima",
        "suggest_rate": suggest_rate,
        "flag_rate": flag_rate,
        "maxima_fit": {"mu": mu, "beta": beta},
        "normal_maxima": [float(v) for v in kept],
        # the same maxima as calibrated scores: where each normal image's peak sits against a
        # region threshold (a normal image gets a suggestion where its peak reaches it)
        "normal_peaks": [round(float(normalise(v, pixel_lo, pixel_thr)), 4) for v in kept],
        # [threshold, expected share of normal images with a suggestion], from the fit
        "expected_share": expected,
        "pixel_quantile": pixel_quantile,
        "pixel_quantile_threshold": float(np.quantile(allpix, pixel_quantile)),
        "max_normal_maximum": float(maxima.max()),
        # held-out images whose maximum the fit calls unlike the rest (they set no threshold)
        "unlike_normals": unlike,
        "images": len(paths),
    }
