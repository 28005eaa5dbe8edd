"""Multi-scale models (``TrainConfig.multiscale``): one fitted network per input size, their maps
made comparable and fused, in one torch module.

``TrainConfig(model="padim", input_size=256, multiscale=(256, 128))`` fits the model twice: on
the network input as it is (256 px) and on the same input area-averaged by 2 (128 px: the
same field of view at half the pixels, where a large, faint defect covers fewer, stronger
patches). :class:`MultiScaleNet` takes the usual ``(N, 3, T, T)`` input, shrinks it inside
``forward`` for each branch (an average pool by the integer factor ``T / size``, which is what
``cv2.INTER_AREA`` does for an integer factor), runs the branch's network, upsamples its raw
map back to ``T`` (bilinear), puts each map on a common scale and fuses them
(``TrainConfig.multiscale_fusion``: the pixel-wise maximum or mean). So it is one network with
the engine's call contract: tiling, calibration, the runtimes, ONNX/OpenVINO export and the
app see one model of the base kind (the artifact's ``kind`` stays ``"padim"``; ``net_args``
holds ``"multiscale"``).

**Common scale.** A branch's raw map is mapped by the affine part of
:func:`~workers.anomaly.inference.normalise` with the thresholds :func:`calibrate` finds for
that branch alone on the held-out normal images (0 = its median normal pixel, 0.5 = its pixel
threshold), clipped below at 0: raw distances of two scales are not comparable, their share of
normal images above a value is. The fused map is then calibrated like any model's by
``train``. The rules are :mod:`.calibration`'s; this module only applies them per branch.

**Training.** Each branch is fitted by the base model's own ``fit`` on the training images as
the network will see them at its size (:class:`ShrunkImages`: the prepared input, area-averaged
by the same factor); a tiled model's branches see tiles of ``size`` px covering the same area
as the full tiles. Measured on the dev sets: docs/anomaly.md, "Multi-scale".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .artifact import LoadedModel
from .calibration import calibrate
from .config import MULTISCALE_FUSIONS, Phase, ProgressCallback, TrainConfig
from .image_io import read_pixels
from .models import Fitted, ModelSpec
from .tiling import Geometry, pad_to_tile
from .training_data import TrainData, TrainImages


class ScaleBranch(nn.Module):
    """One scale: the input area-averaged by ``factor``, the base network, its raw map
    upsampled back to the input's size."""

    def __init__(self, net: nn.Module, factor: int) -> None:
        super().__init__()
        self.net = net
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor == 1:
            return self.net(x)
        raw = self.net(F.avg_pool2d(x, self.factor))
        return F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=False)


class MultiScaleNet(nn.Module):
    """Branches at several input sizes, each map on its normal images' scale, fused."""

    def __init__(self, branches: Sequence[ScaleBranch], fusion: str) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        if fusion not in MULTISCALE_FUSIONS:
            raise ValueError(f"fusion must be one of {MULTISCALE_FUSIONS}, not {fusion!r}")
        self.fusion = fusion
        # per branch: raw -> (raw - lo) / span, so 0 is its median normal pixel and 0.5 its
        # pixel threshold (set by fit; loaded from the state_dict)
        self.register_buffer("lo", torch.zeros(len(branches)))
        self.register_buffer("span", torch.ones(len(branches)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [
            ((branch(x) - self.lo[i]) / self.span[i]).clamp_min(0.0)
            for i, branch in enumerate(self.branches)
        ]
        stacked = torch.cat(maps, dim=1)
        if self.fusion == "mean":
            return stacked.mean(dim=1, keepdim=True)
        return stacked.amax(dim=1, keepdim=True)


def build(spec: ModelSpec, net_args: dict, pretrained: bool) -> MultiScaleNet:
    """The multi-scale network ``net_args["multiscale"]`` describes, of ``spec``'s model."""
    ms = net_args["multiscale"]
    branches = [
        ScaleBranch(spec.build(args, pretrained), ms["input_size"] // size)
        for size, args in zip(ms["sizes"], ms["branches"], strict=True)
    ]
    return MultiScaleNet(branches, ms["fusion"])


class ShrunkImages(TrainImages):
    """Training images as a branch sees them: prepared by the full model's geometry, then
    area-averaged by ``factor`` (the branch's ``avg_pool2d``); tiles of ``size`` px."""

    def __init__(self, source: TrainImages, factor: int) -> None:
        geo = source.geometry
        geometry = Geometry(
            geo.input_size // factor,
            None if geo.scale is None else geo.scale / factor,
            geo.tile_overlap,
        )
        super().__init__(source.paths, geometry, source.cache_bytes // 2)
        self.source_geometry = geo
        self.factor = factor

    def get(self, i: int) -> np.ndarray:
        if i in self.cache:
            return self.cache[i]
        img = self.source_geometry.prepare(read_pixels(self.paths[i]))
        h, w = img.shape[:2]
        f = self.factor
        size = (max(1, round(w / f)), max(1, round(h / f)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        if img.ndim == 2:
            img = img[:, :, None]
        t = self.geometry.input_size
        if img.shape[0] < t or img.shape[1] < t:  # a rounding short of one tile: pad
            img = pad_to_tile(img, t)
        if self.used + img.nbytes <= self.cache_bytes:
            self.cache[i] = img
            self.used += img.nbytes
        return img


def fit(
    spec: ModelSpec,
    config: TrainConfig,
    data: TrainData,
    device: torch.device,
    progress: ProgressCallback,
) -> Fitted:
    """Fit ``spec``'s model once per size of ``config.multiscale``, put each branch's map on
    the scale of its held-out normal images (:func:`calibrate`), and join them."""
    sizes = sorted(config.multiscale, reverse=True)
    t = config.input_size
    branches, branch_args, metrics = [], [], {}
    share = 1.0 / len(sizes)
    for k, size in enumerate(sizes):
        factor = t // size
        phase = Phase(progress, k * share, (k + 0.8) * share)
        sub_config = replace(
            config,
            input_size=size,
            scale=None if config.scale is None else config.scale / factor,
            multiscale=(),
            coarse_pass=False,
        )
        sub_data = (
            data
            if factor == 1
            else TrainData(
                images=ShrunkImages(data.images, factor),
                held_out=ShrunkImages(data.held_out, factor),
            )
        )
        fitted = spec.fit(sub_config, sub_data, device, phase)
        fitted.net.eval()
        branches.append(ScaleBranch(fitted.net, factor))
        branch_args.append(fitted.net_args)
        metrics.update({f"s{size}_{name}": value for name, value in fitted.metrics.items()})
    net = MultiScaleNet(branches, config.multiscale_fusion).to(device)
    for k, (size, branch) in enumerate(zip(sizes, branches, strict=True)):
        lo, threshold = _branch_scale(
            branch,
            config,
            data.held_out.paths,
            device,
            Phase(progress, (k + 0.8) * share, (k + 1) * share),
        )
        # the affine part of inference.normalise: lo -> 0, threshold -> 0.5
        net.lo[k] = lo
        net.span[k] = 2.0 * max(threshold - lo, 1e-12)
        metrics[f"s{size}_pixel_lo"], metrics[f"s{size}_pixel_threshold"] = lo, threshold
    net_args = {
        "multiscale": {
            "input_size": t,
            "sizes": sizes,
            "fusion": config.multiscale_fusion,
            "branches": branch_args,
        }
    }
    return Fitted(net, net_args, metrics)


def _branch_scale(
    branch: ScaleBranch,
    config: TrainConfig,
    paths: Sequence[Path],
    device: torch.device,
    progress: ProgressCallback,
) -> tuple[float, float]:
    """``(pixel_lo, pixel_threshold)`` of one branch alone, by the calibration's own rules on
    the held-out normal images, through the full model's geometry (as ``forward`` runs it)."""
    info = {"min_long_side": 1, "max_long_side": 1 << 30}
    alone = LoadedModel(
        net=branch,
        kind=config.model,
        model_id="branch",
        geometry=Geometry(config.input_size, config.scale, config.tile_overlap, config.shading),
        channels=3,
        calibration={},
        info=info,
        device=device,
        meta={},
    )
    # a scale only, as the calibration rules give it (the fused map is calibrated as a whole)
    cal = calibrate(
        alone, list(paths), config.suggest_rate, config.flag_rate, progress, predictive=False
    )
    return float(cal["pixel_lo"]), float(cal["pixel_threshold"])
