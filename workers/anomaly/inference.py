"""One image to a heatmap, a calibrated score and candidate regions (:func:`predict`).

The network's raw map (:func:`raw_heatmap`: the whole image, or the tile grid batched and
blended) is calibrated with the model's thresholds (:func:`normalise`), joined with its
companions (:func:`joined_map`: the coarse pass of a tiled model, the line model) when it has
them, and turned into regions.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .artifact import LoadedModel, load_model
from .config import Phase, PredictConfig, ProgressCallback, accepted_long_sides, no_progress
from .errors import IncompatibleModelError
from .image_io import read_pixels, specular_mask
from .regions import Region, extract_regions
from .tiling import TILE_SCALE, Stitcher, as_float, tile_grid, to_tensor


@dataclass
class Prediction:
    """Result for one image.

    ``heatmap`` is ``uint8`` ``(h, w)`` at reduced resolution (long side at most
    ``PredictConfig.heatmap_max_side``, never larger than the image), covering the whole image;
    value 128 is the calibrated pixel threshold, 255 at or above twice the threshold's distance
    from normal. ``image_score`` and region scores are calibrated the same way (0.5 = threshold)
    but not capped at 1, so strong anomalies stay ordered. Region coordinates are in original image pixels.
    """

    image_path: str
    image_size: tuple[int, int]
    image_score: float
    is_anomalous: bool
    heatmap: np.ndarray
    regions: list[Region]
    model_id: str
    model_kind: str
    params: dict
    timings: dict
    score_map: np.ndarray | None = None  # float32 calibrated map behind ``heatmap``, uncapped

    def to_dict(self) -> dict:
        """JSON-serialisable dict without the heatmap array (save it with ``save_heatmap``)."""
        return {
            "image_path": self.image_path,
            "image_size": list(self.image_size),
            "image_score": self.image_score,
            "is_anomalous": self.is_anomalous,
            "heatmap_size": list(self.heatmap.shape),
            "regions": [r.to_dict() for r in self.regions],
            "model_id": self.model_id,
            "model_kind": self.model_kind,
            "params": self.params,
            "timings": self.timings,
        }

    def save_heatmap(self, path: str | Path) -> Path:
        """Write the heatmap as an 8-bit grayscale PNG and return the path: for display (it is
        quantised and capped at twice the threshold; score with :meth:`save_score_map`)."""
        path = Path(path)
        if not cv2.imwrite(str(path), self.heatmap):
            raise OSError(f"cannot write heatmap to {path}")
        return path

    def save_score_map(self, path: str | Path) -> Path:
        """Write ``score_map`` (float32, calibrated: 0.5 = pixel threshold, not capped) as a
        ``.npy`` file and return the path: the map to score or threshold, pixel for pixel the
        same grid as the PNG."""
        if self.score_map is None:
            raise ValueError(f"{self.image_path}: this prediction holds no float score map")
        path = Path(path)
        np.save(path, self.score_map.astype(np.float32, copy=False), allow_pickle=False)
        return path


def size_outside(model: LoadedModel, image: np.ndarray) -> bool:
    """Whether the image's long side is outside x0.5-x2 of the training images' long sides."""
    lo, hi = accepted_long_sides(model.info["min_long_side"], model.info["max_long_side"])
    return not lo <= max(image.shape[:2]) <= hi


def fitted(model: LoadedModel, image: np.ndarray) -> tuple[np.ndarray, dict | None]:
    """The image a tiled model should see: itself, or (its size outside the trained range)
    resized so its long side is the nearest end of the training images' range, with
    ``{"from", "to"}`` long sides; a whole-image model takes any image as it is."""
    if model.geometry.scale is None or not size_outside(model, image):
        return image, None
    h, w = image.shape[:2]
    long_side = max(h, w)
    lo, hi = model.info["min_long_side"], model.info["max_long_side"]
    target = min(max(long_side, lo), hi)
    f = target / long_side
    size = (max(1, round(w * f)), max(1, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, size, interpolation=interp)
    if small.ndim == 2:
        small = small[:, :, None]
    return small, {"from": int(long_side), "to": int(target)}


def check_compatible(model: LoadedModel, image: np.ndarray, path: str, allow: bool) -> None:
    """Refuse an image of the other channel kind, or (unless ``allow``) far off the training
    images' size range (x0.5-x2 of their long sides)."""
    channels = image.shape[2]
    if channels != model.channels:
        kind = {1: "grayscale", 3: "colour"}
        raise IncompatibleModelError(
            f"{path}: image is {kind.get(channels, channels)} ({channels} channel(s)) but the "
            f"model was trained on {kind.get(model.channels, model.channels)} images"
        )
    if allow:
        return
    long_side = max(image.shape[:2])
    lo, hi = model.info["min_long_side"], model.info["max_long_side"]
    if size_outside(model, image):
        raise IncompatibleModelError(
            f"{path}: image long side {long_side}px is outside the range the model was trained "
            f"for ({lo}-{hi}px, x0.5-x2 tolerated); train a model for this image size, or pass "
            "fit_size=True (resize it into that range) or allow_size_mismatch=True"
        )


@torch.no_grad()
def raw_heatmap(
    model: LoadedModel,
    image: np.ndarray,
    config: PredictConfig | None = None,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Uncalibrated anomaly map of ``image`` at the reduced output resolution (float32)."""
    config = config or PredictConfig()
    progress = progress or no_progress
    geo = model.geometry
    h, w = image.shape[:2]
    out_h, out_w = heatmap_size(h, w, config.heatmap_max_side)
    t = geo.input_size
    device = model.device
    autocast = torch.autocast(
        "cuda", dtype=torch.float16, enabled=config.half and device.type == "cuda"
    )
    if geo.scale is None:
        raw = whole_maps(model, [geo.prepare(image)], config)[0]
        progress(1.0, "1/1 tiles")
        return cv2.resize(raw, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    hs, ws = geo.scaled_size(h, w)
    # Tiles are cut from the image in its own pixel type and made float a batch at a time: a
    # large image stays in 8 or 16 bits instead of a float copy (twice over for the
    # channel-first one), and a GPU receives a quarter of the bytes (docs/anomaly.md).
    net_image = geo.prepare_pixels(image)
    if net_image.dtype not in TILE_SCALE:
        net_image = as_float(net_image)
    scale_to_float = TILE_SCALE[net_image.dtype]
    grid = tile_grid(net_image.shape[0], net_image.shape[1], t, geo.overlap_px(config.tile_overlap))
    stitch_device = device if isinstance(model.net, torch.nn.Module) else torch.device("cpu")
    stitcher = Stitcher(
        net_image.shape[0], net_image.shape[1], t, config.stitch_downsample, stitch_device
    )
    # One upload of the whole image; tiles are views cut on the device (no per-tile copies).
    whole = torch.from_numpy(np.ascontiguousarray(net_image.transpose(2, 0, 1))).to(stitch_device)
    for start in range(0, len(grid), config.batch_size):
        chunk = grid[start : start + config.batch_size]
        batch = torch.stack([whole[:, c.y : c.y + t, c.x : c.x + t] for c in chunk])
        if scale_to_float is not None:  # what to_float does, in the same float32 arithmetic
            batch = batch.float() / scale_to_float
        with autocast:
            maps = model.net(batch)[:, 0]
        stitcher.add_batch(chunk, maps)
        done = start + len(chunk)
        progress(done / len(grid), f"{done}/{len(grid)} tiles")
    stitched = stitcher.result()
    ds = stitcher.downsample
    stitched = stitched[: max(1, math.ceil(hs / ds)), : max(1, math.ceil(ws / ds))]
    return cv2.resize(stitched, (out_w, out_h), interpolation=cv2.INTER_LINEAR)


def whole_maps(
    model: LoadedModel, net_images: list[np.ndarray], config: PredictConfig
) -> np.ndarray:
    """Raw maps ``(N, T, T)`` of whole-image-mode network inputs, pushed through in one batch."""
    device = model.device
    autocast = torch.autocast(
        "cuda", dtype=torch.float16, enabled=config.half and device.type == "cuda"
    )
    with torch.no_grad(), autocast:
        return model.net(to_tensor(net_images, device))[:, 0].float().cpu().numpy()


def heatmap_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Output heatmap size: the image shrunk so its long side is at most ``max_side``
    (``PredictConfig.heatmap_max_side``), never larger than the image. A whole-image model's map
    is interpolated up to it too: stopping at the network's size thresholds thin defects on a
    coarser grid (docs/anomaly.md, "Heatmap size")."""
    factor = min(1.0, max_side / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def normalise(raw: np.ndarray | float, lo: float, threshold: float) -> np.ndarray | float:
    """Calibrated score: ``lo`` (typical normal) -> 0, ``threshold`` -> 0.5, ``2*thr-lo`` -> 1.

    Clipped below at 0 but NOT above: strong anomalies keep their order (a cap at 1 would tie
    them and make ranking suggestions by score meaningless). Only the 8-bit PNG is capped.
    """
    span = max(threshold - lo, 1e-6 * abs(threshold) + 1e-12)
    return np.maximum(0.5 + 0.5 * (np.asarray(raw) - threshold) / span, 0.0)


def calibrated_map(
    model: LoadedModel,
    image: np.ndarray,
    config: PredictConfig,
    progress: ProgressCallback | None,
    spec: np.ndarray | None,
    whole_raw: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Calibrated heatmap (float, 0.5 = pixel threshold) and calibrated image score.

    ``whole_raw``: the network's map of a whole-image model, already computed (batched).
    """
    if whole_raw is None:
        raw = raw_heatmap(model, image, config, progress)
    else:
        out_h, out_w = heatmap_size(*image.shape[:2], config.heatmap_max_side)
        raw = cv2.resize(whole_raw, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    cal = model.calibration
    if spec is not None:
        small = cv2.resize(spec.astype(np.uint8), raw.shape[::-1], interpolation=cv2.INTER_NEAREST)
        small = cv2.dilate(small, np.ones((3, 3), np.uint8)) > 0
        raw = np.where(small, cal["pixel_lo"], raw)
    calibrated = normalise(raw, cal["pixel_lo"], cal["pixel_threshold"]).astype(np.float32)
    image_score = float(normalise(float(raw.max()), cal["image_lo"], cal["image_threshold"]))
    return calibrated, image_score


def _with_coarse(
    model: LoadedModel,
    image: np.ndarray,
    config: PredictConfig,
    progress: ProgressCallback,
    spec: np.ndarray | None,
    whole_raw: np.ndarray | None,
) -> tuple[np.ndarray, float, bool]:
    """The model's calibrated map and image score, joined with its coarse pass (a tiled model's
    whole-image model) by the maximum when it has one and ``config`` wants it: a defect counts
    if either scale sees it, and both maps share one calibrated scale."""
    use_coarse = model.coarse is not None and config.coarse_pass
    fine_progress = Phase(progress, 0, 0.9) if use_coarse else progress
    calibrated, image_score = calibrated_map(model, image, config, fine_progress, spec, whole_raw)
    if use_coarse:
        coarse_map, coarse_score = calibrated_map(model.coarse, image, config, None, spec)
        if coarse_map.shape != calibrated.shape:  # both follow the image; be safe anyway
            size = calibrated.shape[::-1]
            coarse_map = cv2.resize(coarse_map, size, interpolation=cv2.INTER_LINEAR)
        calibrated = np.maximum(calibrated, coarse_map)
        image_score = max(image_score, coarse_score)
        progress(1.0, "coarse pass")
    return calibrated, image_score, use_coarse


def line_parts(
    model: LoadedModel,
    image: np.ndarray,
    config: PredictConfig,
    progress: ProgressCallback | None = None,
    spec: np.ndarray | None = None,
    whole_raw: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """``(model's map, line model's map, larger image score, coarse pass used)``: the model's
    calibrated map (with its coarse pass as ``config`` says) and its line model's at the same
    place. Their sum is what the model's ``with_lines`` calibration is fitted on
    (:func:`joined_map`); the larger image score is the rule before that calibration."""
    progress = progress or no_progress
    main, image_score, use_coarse = _with_coarse(
        model, image, config, Phase(progress, 0, 0.95), spec, whole_raw
    )
    lines_map, lines_score = calibrated_map(model.lines, image, config, None, spec)
    if lines_map.shape != main.shape:
        lines_map = cv2.resize(lines_map, main.shape[::-1], interpolation=cv2.INTER_LINEAR)
    progress(1.0, "line detector")
    return main, lines_map, max(image_score, lines_score), use_coarse


def joined_map(
    model: LoadedModel,
    image: np.ndarray,
    config: PredictConfig,
    progress: ProgressCallback,
    spec: np.ndarray | None,
    whole_raw: np.ndarray | None = None,
) -> tuple[np.ndarray, float, bool, bool]:
    """``(calibrated map, image score, coarse pass used, line model used)``: the model's map
    joined with its companions as ``config`` allows (docs/anomaly.md, "Line detector").

    With the line model, the sum of the two calibrated maps (:func:`line_parts`) is calibrated
    again by the model's ``with_lines`` calibration (held-out normal images' sums, the model's
    own suggest and flag rates), so that 0.5 stays where the model with its line detector puts
    a share ``suggest_rate`` of normal images' peaks. It is fitted with the coarse pass on (the
    default): with ``coarse_pass=False`` the sum is lower or equal, so no more is suggested than
    calibrated for. A model trained before that calibration existed joins the two by the
    maximum, as it was calibrated for.
    """
    use_lines = model.lines is not None and config.lines
    if not use_lines:
        return (*_with_coarse(model, image, config, progress, spec, whole_raw), False)
    main, lines_map, larger_score, use_coarse = line_parts(
        model, image, config, progress, spec, whole_raw
    )
    fusion = model.calibration.get("with_lines")
    if fusion is None:  # the rule it was calibrated for: each map on its own scale, the larger
        return np.maximum(main, lines_map), larger_score, use_coarse, True
    # a crack's faint trace in the model's map and its valley in the line model's add up, where
    # the larger of the two would keep only one
    total = main + lines_map
    calibrated = normalise(total, fusion["pixel_lo"], fusion["pixel_threshold"])
    image_score = float(
        normalise(float(total.max()), fusion["image_lo"], fusion["image_threshold"])
    )
    return calibrated.astype(np.float32), image_score, use_coarse, True


def predict(
    model: LoadedModel | str | Path,
    image_path: str | Path,
    config: PredictConfig | None = None,
    progress: ProgressCallback | None = None,
    image: np.ndarray | None = None,
) -> Prediction:
    """Heatmap, score and candidate regions for one image at full resolution.

    ``model`` is a :class:`LoadedModel` or an artifact path (loaded through the cache).
    ``image`` may be passed already decoded (:func:`read_pixels`, as the file is read here,
    or :func:`read_image`) to skip reading the file.
    """
    config = config or PredictConfig()
    if not isinstance(model, LoadedModel):
        model = load_model(model, config.device)
    t0 = time.perf_counter()
    if image is None:
        image = read_pixels(image_path)
    read_s = time.perf_counter() - t0
    check_compatible(model, image, str(image_path), config.allow_size_mismatch or config.fit_size)
    return predict_decoded(model, image_path, image, config, progress, read_s)


def predict_decoded(
    model: LoadedModel,
    image_path: str | Path,
    image: np.ndarray,
    config: PredictConfig,
    progress: ProgressCallback | None,
    read_s: float,
    whole_raw: np.ndarray | None = None,
    shared_s: float = 0.0,
) -> Prediction:
    """The part of :func:`predict` after decoding; ``whole_raw`` and ``shared_s`` come from
    :func:`~workers.anomaly.pipeline.predict_many` (the image's map from a batch, and its share
    of the batch's time)."""
    progress = progress or no_progress
    t_read = time.perf_counter()
    full_shape = image.shape[:2]
    resized = None
    if config.fit_size:
        image, resized = fitted(model, image)
        if resized is not None:
            whole_raw = None  # a batched map was of the image before it was resized
    spec = None
    if config.specular_mask:
        spec = specular_mask(image, config.specular_v_min, config.specular_s_max)
    calibrated, image_score, use_coarse, use_lines = joined_map(
        model, image, config, progress, spec, whole_raw
    )
    t_map = time.perf_counter()
    cal = model.calibration
    regions = extract_regions(calibrated, full_shape, config.regions)  # full-resolution pixels
    heatmap = np.round(np.clip(calibrated, 0.0, 1.0) * 255).astype(np.uint8)
    t_end = time.perf_counter()
    megapixels = full_shape[0] * full_shape[1] / 1e6
    params = {
        "geometry": asdict(model.geometry),
        "tile_overlap": config.tile_overlap,
        "batch_size": config.batch_size,
        "heatmap_max_side": config.heatmap_max_side,
        "regions": asdict(config.regions),
        "specular_mask": config.specular_mask,
        "coarse_pass": use_coarse,
        "lines": use_lines,
        "calibration": cal,
        "resized": resized,
    }
    return Prediction(
        image_path=str(image_path),
        image_size=(int(full_shape[0]), int(full_shape[1])),
        image_score=image_score,
        is_anomalous=image_score >= 0.5,
        heatmap=heatmap,
        regions=regions,
        model_id=model.model_id,
        model_kind=model.kind,
        score_map=calibrated,
        params=params,
        timings={
            "read_s": round(read_s, 4),
            "heatmap_s": round(t_map - t_read + shared_s, 4),
            "total_s": round(t_end - t_read + shared_s + read_s, 4),
            "megapixels": round(megapixels, 3),
        },
    )
