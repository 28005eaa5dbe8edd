"""Thresholds from normal images: what makes a model's scores comparable (0.5 = threshold).

Both thresholds come from the distribution of the held-out normal images' maxima (an image's
highest raw pixel score), fitted as an extreme-value (Gumbel) distribution by its median and
median absolute deviation: a few normal images unlike the rest (brighter, darker, another batch)
move neither, where the old rules (the maximum of the maxima, and a quantile of all pixels
pooled) were set by those few alone. A fit to a few held-out images is itself uncertain, so the
pixel threshold (suggestions) is predictive: set where the share of *unseen* normal images
expected to reach it, averaged over what such a fit to that many images can be, is the rate asked
for (:func:`predictive_threshold`). The rules, the reasons and the figures are in docs/anomaly.md,
"Calibration"; scores are then mapped by :func:`~workers.anomaly.inference.normalise`.
"""

from __future__ import annotations

import functools
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
# The pixel threshold is predictive from this many held-out images on (below: the fit's own
# quantile, as where the spread was floored rather than fitted).
PREDICTIVE_MIN_IMAGES = 3
# The Monte Carlo that sizes the predictive thresholds: about DRAW_VALUES draws of maxima in all,
# at least MIN_DRAWS sets, seeded by their count (the same maxima give the same thresholds,
# within one NumPy version). Beyond FACTOR_MAX_IMAGES held-out images that many are simulated:
# the factors of the 25 % and 5 % points are then within 0.003 and 0.015 scales of their limit.
DRAW_VALUES = 1_000_000
MIN_DRAWS = 4000
FACTOR_MAX_IMAGES = 500
# The factors searched, in fitted scales from the median maximum: a rate that a handful of
# held-out images cannot promise stops at the top (3 images and a 1 % rate need about 85).
MAX_FACTOR = 200.0
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


def share_above(mu: float, beta: float, raw: float | np.ndarray) -> float | np.ndarray:
    """The expected share of normal images whose maximum reaches ``raw`` (each of an array)."""
    out = -np.expm1(-np.exp(-(np.asarray(raw, dtype=np.float64) - mu) / beta))
    return float(out) if out.ndim == 0 else out


@functools.lru_cache(maxsize=16)
def _standard_fits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`fit_maxima` makes of ``n`` maxima drawn from the standard Gumbel law, over
    many draws: ``(medians, scales)``. Its fit is location-scale equivariant, so these are what
    any fit to ``n`` maxima can be, in units of that fit (the spread's floor aside)."""
    rng = np.random.default_rng(n)
    draws = rng.gumbel(size=(max(MIN_DRAWS, DRAW_VALUES // n), n))
    medians = np.median(draws, axis=1)
    scales = np.median(np.abs(draws - medians[:, None]), axis=1) / GUMBEL_MAD
    medians.flags.writeable = scales.flags.writeable = False
    return medians, scales


def _unseen_share(n: int, factor: np.ndarray) -> np.ndarray:
    """The share of unseen normal images expected to reach ``median + factor * beta`` when the
    median and ``beta`` were fitted to ``n`` held-out maxima, averaged over the fits."""
    medians, scales = _standard_fits(min(n, FACTOR_MAX_IMAGES))
    out = np.empty(np.size(factor))
    for i, f in enumerate(np.ravel(factor)):  # one row at a time: the draws are many
        out[i] = -np.expm1(-np.exp(-(medians + scales * f))).mean()
    return out


@functools.lru_cache(maxsize=256)
def _factor(n: int, rate: float) -> float:
    """``c``: the share of unseen normal images expected to reach ``median + c * beta`` is
    ``rate`` (:func:`predictive_threshold`); bisection, the share falling as ``c`` grows."""
    n = min(n, FACTOR_MAX_IMAGES)
    lo, hi = -MAX_FACTOR, MAX_FACTOR
    if _unseen_share(n, np.asarray([hi]))[0] > rate:
        return hi
    for _ in range(40):  # to about 4e-10 of a scale
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _unseen_share(n, np.asarray([mid]))[0] > rate else (lo, mid)
    return hi


def _fitted(maxima: np.ndarray, beta: float) -> bool:
    """Whether ``beta`` is the fit's (predictive rules apply) and not the spread's floor."""
    if maxima.size < PREDICTIVE_MIN_IMAGES:
        return False
    median = float(np.median(maxima))
    return beta <= float(np.median(np.abs(maxima - median))) / GUMBEL_MAD * (1 + 1e-9)


def predictive_threshold(maxima: np.ndarray, beta: float, rate: float) -> float:
    """The raw score that a share ``rate`` of unseen normal images is expected to reach, the fit
    ``beta`` to these held-out ``maxima`` being uncertain (fewer images, higher threshold).

    The fit's own quantile (``gumbel_quantile``) keeps that promise only for many held-out
    images: fitted to 5 normal images' maxima, its 25 % and 5 % points are reached by 32.5 % and
    15 % of unseen ones on average, to 18 by 27 % and 7.6 % (``benchmarks/calibration.py
    --simulate``). Here the factor ``c`` in ``median + c * beta`` is set so that the expected
    share, averaged over what a fit to that many maxima can be, is ``rate``. Where the spread is
    a floor rather than a fit (fewer than ``PREDICTIVE_MIN_IMAGES`` images, or maxima that do
    not differ: :func:`fit_maxima`), the fit's own quantile."""
    maxima = np.asarray(maxima, dtype=np.float64)
    median = float(np.median(maxima))
    if not _fitted(maxima, beta):
        return median + (-GUMBEL_MEDIAN - math.log(-math.log(1.0 - rate))) * beta
    return median + _factor(maxima.size, float(rate)) * beta


def unseen_shares(maxima: np.ndarray, beta: float, raw: np.ndarray) -> np.ndarray:
    """The share of unseen normal images expected to reach each raw score in ``raw``, by the
    same account as :func:`predictive_threshold` (the fit's own where that one is)."""
    maxima = np.asarray(maxima, dtype=np.float64)
    factor = (np.atleast_1d(np.asarray(raw, dtype=np.float64)) - float(np.median(maxima))) / beta
    if not _fitted(maxima, beta):  # the fit's own law, in units of its scale
        return share_above(-GUMBEL_MEDIAN, 1.0, factor)
    return _unseen_share(maxima.size, factor)


def thresholds_from_maxima(
    maxima: np.ndarray, suggest_rate: float, flag_rate: float, predictive: bool = True
) -> tuple[float, float, float, float, int]:
    """``(mu, beta, pixel_threshold, image_threshold, unlike)`` from held-out normal images'
    maxima (raw units); ``unlike``: how many of them the fit calls unlike the rest. The rules are
    :func:`calibrate`'s; ``predictive=False``: the pixel threshold at the fit's own quantile (the
    rule before, kept for comparisons and for the maps that only set a scale)."""
    maxima = np.asarray(maxima, dtype=np.float64)
    mu, beta = fit_maxima(maxima)
    if predictive:
        pixel_thr = predictive_threshold(maxima, beta, suggest_rate)
    else:
        pixel_thr = gumbel_quantile(mu, beta, 1.0 - suggest_rate)
    limit = gumbel_quantile(mu, beta, 1.0 - OUTLIER_P / len(maxima))
    typical = maxima[maxima <= limit]  # never empty: the median is below the limit
    # the verdict stays at the fit's own quantile, floored by the held-out maxima (and by the
    # pixel threshold): predictive, five held-out bottles put it 6.2 fitted scales above their
    # median maximum and 3 of 15 broken bottles went unflagged (docs/anomaly.md,
    # "Calibration"); what it does to normal images is recorded instead (``verdict_share``)
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
    predictive: bool = True,
) -> dict:
    """Pixel and image thresholds from normal images (held out from training when possible).

    ``pixel_threshold`` (where regions start, hence suggestions) is the raw score that a share
    ``suggest_rate`` of unseen normal images' maxima is expected to reach, the fit's uncertainty
    included (:func:`predictive_threshold`). ``image_threshold`` (the verdict,
    ``is_anomalous``: what stops a part at a station) is the fit's point that a share
    ``flag_rate`` reaches, and at least every held-out maximum that the fit does not call
    unlike the rest: a few held-out images estimate the tail poorly (four bottles put the 5 %
    point below an ordinary held-out bottle that unseen ones then crossed), and a false NG
    costs more than a false suggestion.
    ``pixel_quantile`` of all normal pixels pooled is recorded beside them
    (``pixel_quantile_threshold``: the rule before this one, for comparisons).
    ``raw_map(image)``: the map calibrated, when it is not the model's own network map (a model
    with its line detector: :func:`~.inference.line_parts`). ``predictive=False`` keeps the
    fit's own quantile for the pixel threshold: for maps whose calibration only sets a scale
    before they are joined (companions, a multi-scale model's branches), whose suggestions
    come from the joined map's own calibration."""
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
    mu, beta, pixel_thr, image_thr, unlike = thresholds_from_maxima(
        maxima, suggest_rate, flag_rate, predictive
    )
    _, _, plain_pixel, plain_image, _ = thresholds_from_maxima(
        maxima, suggest_rate, flag_rate, predictive=False
    )
    pixel_lo = float(np.median(allpix))
    if pixel_lo >= pixel_thr:  # a map flat at its maximum: keep the scale's direction
        pixel_lo = pixel_thr - beta
    image_lo = float(np.median(maxima))
    if image_lo >= image_thr:
        image_lo = image_thr - beta
    kept = np.sort(maxima if maxima.size <= KEPT_MAXIMA else rng.choice(maxima, KEPT_MAXIMA, False))
    # a region threshold t (the project's "score from") in raw units, as regions.py applies it
    span = pixel_thr - pixel_lo
    grid = np.asarray(SHARE_GRID)
    raws = pixel_thr + (grid - 0.5) * 2 * span
    shares = unseen_shares(maxima, beta, raws) if predictive else share_above(mu, beta, raws)
    expected = [[t, round(float(v), 5)] for t, v in zip(SHARE_GRID, shares, strict=True)]
    return {
        "pixel_lo": pixel_lo,
        "pixel_threshold": pixel_thr,
        "image_lo": image_lo,
        "image_threshold": image_thr,
        "rule": "gumbel fit of normal images' maxima",
        "predictive": predictive,
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
        # the pixel threshold at the fit's own quantile, the rule before the predictive one, and
        # the image threshold beside it (for comparisons)
        "fit_quantile_thresholds": [plain_pixel, plain_image],
        # the share of unseen normal images expected to reach the image threshold (the verdict),
        # by the predictive account: the flag rate asked for, or more with few held-out images
        "verdict_share": round(float(unseen_shares(maxima, beta, np.asarray(image_thr))[0]), 5),
        # held-out images whose maximum the fit calls unlike the rest (they set no threshold)
        "unlike_normals": unlike,
        "images": len(paths),
    }
