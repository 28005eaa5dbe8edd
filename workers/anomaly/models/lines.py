"""Lines: thin dark lines darker than the normal images show at that place (cracks, dark
scratches), a classical companion for a feature model (``TrainConfig.lines``).

Feature models compare patches of ImageNet features with the normal images' patches. A crack a
few pixels wide that starts at a tile's edge looks, to them, like the grinding marks every
normal tile has (thin dark lines too): on magnetic tiles PatchCore's crack image AUROC stays near
0.79 whatever the input size, backbone or scoring (docs/benchmarks-anomaly.md). What tells a
crack from a grinding mark is how deep and sharp its valley is. This model measures that and
nothing else:

* the grey image's Hessian from Gaussian derivatives at ``sigma`` px of the network input; its
  larger eigenvalue, where positive, is the depth of a dark valley across a line (Sato's
  tubeness for dark ridges, ``skimage.filters.sato(black_ridges=True)``, in 2-D);
* fitting is one pass over the normal images: at each place of the input, the mean and spread
  of the strongest valley within ``spread`` px of it (so that a line moving a little from one
  normal image to the next still sets the bar), streamed, no image kept;
* the map is each pixel's valley less that mean, over that spread, widened to ``WIDEN`` px: a
  crack deeper than any grinding mark at its place scores high, and the tile's own edges (dark
  in every normal image) do not.

It needs no weights and fits in seconds. Alone it is a narrow model (it sees nothing but dark
lines); beside PaDiM or PatchCore (``TrainConfig.lines``: the two calibrated maps' sum,
calibrated again, ``inference.joined_map``) it adds what they miss. Bright lines are left out:
on magnetic tiles the grinding marks' bright lines cost more than they found
(docs/benchmarks-anomaly.md).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from ..config import Phase, ProgressCallback, TrainConfig
from ..training_data import TrainData
from . import Fitted, ModelSpec, register

#: Gaussian scale of the line profile, px of the network input.
SIGMA = 1.5
#: A normal line within this many px of a place sets that place's bar.
SPREAD = 8
#: The map's lines are widened to this many px (odd), as feature models' maps are blurred.
WIDEN = 5
#: Grey weights (ITU-R 601), as the LBP model's.
GREY = (0.299, 0.587, 0.114)


def gaussian_kernels(sigma: float) -> torch.Tensor:
    """``(3, K)``: the 1-D Gaussian and its first and second derivatives, radius ``4 sigma``."""
    radius = max(1, math.ceil(4 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    d1 = -t / sigma**2 * g
    d2 = (t**2 / sigma**4 - 1 / sigma**2) * g
    return torch.stack([g, d1, d2]).float()


class LinesNet(nn.Module):
    """Dark-valley depth per pixel, standardised by the normal images' at each place."""

    def __init__(self, size: int, sigma: float = SIGMA, spread: int = SPREAD) -> None:
        super().__init__()
        self.size, self.sigma, self.spread = int(size), float(sigma), int(spread)
        self.register_buffer("grey", torch.tensor(GREY).view(1, 3, 1, 1))
        self.register_buffer("kernels", gaussian_kernels(self.sigma))
        self.register_buffer("mean", torch.zeros(1, 1, self.size, self.size))
        self.register_buffer("spread_sd", torch.ones(1, 1, self.size, self.size))
        self.eval()

    def _along(self, x: torch.Tensor, row: int, axis: str) -> torch.Tensor:
        k = self.kernels[row]
        pad = k.numel() // 2
        if axis == "x":
            return F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="replicate"), k.view(1, 1, -1, 1))

    def valleys(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, T, T)``: the depth of a dark line across each pixel of RGB ``x`` in
        ``[0, 1]`` (0 where there is none)."""
        grey = (x * self.grey).sum(1, keepdim=True)
        hxx = self._along(self._along(grey, 2, "x"), 0, "y")
        hyy = self._along(self._along(grey, 0, "x"), 2, "y")
        hxy = self._along(self._along(grey, 1, "x"), 1, "y")
        half_trace = (hxx + hyy) / 2
        root = (((hxx - hyy) / 2) ** 2 + hxy**2).sqrt()
        return (half_trace + root).clamp_min(0) * self.sigma**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the per-place statistics are of the input size it was fitted at: the engine always
        # feeds that size (whole images resized to it, or tiles of it)
        depth = self.valleys(x)
        mean, sd = self.mean, self.spread_sd
        # widened by WIDEN px (the maximum around each pixel): a crack one or two pixels wide
        # would otherwise be opened away by the regions' morphology, and miss its mask by a
        # pixel
        return F.max_pool2d((depth - mean) / sd, WIDEN, 1, WIDEN // 2)


def fit_lines(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    """One pass over the training images' tiles: each place's mean and spread of the strongest
    valley within ``SPREAD`` px (module docstring)."""
    started = time.monotonic()
    net = LinesNet(config.input_size).to(device)
    total = torch.zeros_like(net.mean, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    with torch.no_grad():
        for batch in data.images.grid_batches(8, device, Phase(progress, 0.02, 0.85)):
            near = F.max_pool2d(net.valleys(batch), 2 * SPREAD + 1, 1, SPREAD).double()
            total += near.sum(0, keepdim=True)
            squares += (near**2).sum(0, keepdim=True)
            count += near.shape[0]
    mean = total / count
    sd = (squares / count - mean**2).clamp_min(0).sqrt()
    # a place where every normal image is flat would divide by ~0: its spread is at least a
    # tenth of the typical one, and 1e-4 (depths of grey levels in [0, 1]; one normal tile)
    sd = sd.clamp_min(max(0.1 * float(sd.mean()), 1e-4))
    net.mean.copy_(mean.float())
    net.spread_sd.copy_(sd.float())
    progress(0.85, f"fitted on {count} tiles")
    metrics = {"tiles": count, "sigma": SIGMA, "spread": SPREAD}
    metrics["fit_seconds"] = round(time.monotonic() - started, 2)
    return Fitted(net, net_args(net), metrics)


def net_args(net: LinesNet) -> dict:
    return {"size": net.size, "sigma": net.sigma, "spread": net.spread}


def build(net_args: dict, pretrained: bool = False) -> LinesNet:
    del pretrained  # nothing pretrained
    return LinesNet(**net_args)


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    return fit_lines(config, data, device, progress)


register(ModelSpec("lines", build, fit, min_input_size=64))
