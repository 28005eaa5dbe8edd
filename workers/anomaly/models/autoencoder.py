"""A small convolutional autoencoder: what it cannot reconstruct is the anomaly map.

The network learns to reproduce normal images through a narrow bottleneck, and an anomaly is
what it fails to reproduce. The map combines two errors per pixel, as in Bergmann et al.,
"Improving Unsupervised Defect Segmentation by Applying Structural Similarity to Autoencoders"
(VISAPP 2019):

* the squared error, averaged over the channels: changes of colour and brightness;
* ``(1 - SSIM) / 2`` (Gaussian window of 11 px, sigma 1.5, per channel, then averaged):
  changes of local structure and contrast, which the squared error spreads thin.

Each is divided by its mean over the training tiles (buffers set after training), so that
neither dominates whatever the product's contrast, they are averaged with equal weights, and
the sum is blurred lightly (Gaussian, sigma 2 px).

Choices (docs/anomaly.md, "Models", has the figures on the dev sets and the command that
measured them; the alternatives below were tried while this was built, by runs that
benchmarks/anomaly.py cannot repeat, so no figures of theirs are quoted):

* Encoder: four 4x4 stride-2 convolutions (16, 32, 64, 128 channels, a 3x3 convolution after
  each but the first) down to 1/16, then a 1x1 convolution to a 16-channel bottleneck (16 x 16
  x 16 values for a 256 px input). The decoder mirrors it with nearest-neighbour upsampling and
  3x3 convolutions, and ends in a sigmoid. 0.53 M parameters. A bottleneck of 8 or 64
  channels, and a wider network stopping at 1/8 (which reconstructs the defects too), did
  worse on bottle.
* Training: Adam on random crops (the whole image in whole-image mode) of ``batch_size``,
  ``steps`` steps, the learning rate decaying to a tenth on a cosine; loss = mean squared
  error + mean ``(1 - SSIM) / 2``. It stops early as every model trained in steps does
  (:class:`~workers.anomaly.steps.StepBudget`: ``patience``, ``max_seconds``). No
  augmentation: random horizontal and vertical flips did not help beyond the spread between
  seeds, and a flipped part can be a defect.
* Its defaults (``ModelSpec.train_defaults``, taken where ``TrainConfig`` leaves ``steps``,
  ``batch_size`` or ``learning_rate`` at ``None``) are :data:`STEPS` steps of
  :data:`BATCH_SIZE` at :data:`LEARNING_RATE`: EfficientAD's 1e-4 and batch of 1 leave it
  undertrained. The 1000 steps of 4 at 256 px take about 6 min on one CPU thread.
* No ImageNet weights: nothing to download, and training is minutes on a CPU.
* Everything is plain torch operations in the forward (the SSIM's five local moments are one
  depthwise separable convolution over the stacked images), so it exports to ONNX.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import Phase, ProgressCallback, TrainConfig
from ..steps import StepBudget
from ..training_data import TrainData
from . import Fitted, ModelSpec, register

#: Encoder widths, one per stride-2 level (the bottleneck is at 1/2**len).
CHANNELS = (16, 32, 64, 128)
#: Channels of the bottleneck.
LATENT = 16
#: Weight of the normalised squared error in the map (the SSIM term has the rest).
L2_WEIGHT = 0.5
#: SSIM's Gaussian window: taps and sigma (Wang et al.'s 11 x 11, sigma 1.5).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: Sigma (px) of the Gaussian blur of the final map.
BLUR_SIGMA = 2.0
#: Tiles (at most) over which the two errors' means are taken after training.
NORMALISER_TILES = 512
# SSIM's stabilisers for data in [0, 1]
C1, C2 = 0.01**2, 0.03**2
#: Training defaults (``ModelSpec.train_defaults``: what ``TrainConfig`` fields left at
#: ``None`` become).
STEPS = 1000
BATCH_SIZE = 4
LEARNING_RATE = 1e-3


def gaussian_1d(sigma: float, size: int | None = None) -> torch.Tensor:
    """A normalised 1-D Gaussian of ``size`` taps (default ``2 * ceil(3 sigma) + 1``)."""
    size = size or 2 * math.ceil(3 * sigma) + 1
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def separable(x: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D filter of ``x`` (reflect-padded, same size) as a column and a row pass;
    ``row`` is ``(C, 1, 1, k)``, ``col`` ``(C, 1, k, 1)``."""
    p = row.shape[-1] // 2
    x = F.pad(x, (p, p, p, p), mode="reflect")
    groups = x.shape[1]
    return F.conv2d(F.conv2d(x, col, groups=groups), row, groups=groups)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class AutoencoderNet(nn.Module):
    """Convolutional autoencoder; forward returns the combined reconstruction-error map."""

    def __init__(
        self,
        channels: tuple[int, ...] | list[int] = CHANNELS,
        latent: int = LATENT,
        l2_weight: float = L2_WEIGHT,
        blur_sigma: float = BLUR_SIGMA,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), _act()]
            if i:
                layers += [nn.Conv2d(c, c, 3, 1, 1), _act()]
            c_in = c
        layers.append(nn.Conv2d(c_in, latent, 1))
        self.encoder = nn.Sequential(*layers)
        layers = [nn.Conv2d(latent, c_in, 3, 1, 1), _act()]
        for c in reversed(channels[:-1]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c, 3, 1, 1)]
            layers.append(_act())
            if c >= 32:  # not at the two finest levels: they cost the most per channel
                layers += [nn.Conv2d(c, c, 3, 1, 1), _act()]
            c_in = c
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, 3, 3, 1, 1)]
        self.decoder = nn.Sequential(*layers)
        self.l2_weight = float(l2_weight)
        # the filters are fixed by the arguments: not saved, rebuilt with the network
        window = gaussian_1d(SSIM_SIGMA, SSIM_WINDOW)
        self.register_buffer("ssim_row", window.view(1, 1, 1, -1).repeat(15, 1, 1, 1), False)
        self.register_buffer("ssim_col", window.view(1, 1, -1, 1).repeat(15, 1, 1, 1), False)
        blur = gaussian_1d(blur_sigma)
        self.register_buffer("blur_row", blur.view(1, 1, 1, -1), False)
        self.register_buffer("blur_col", blur.view(1, 1, -1, 1), False)
        # what training learns besides the weights: the errors' means on the training tiles
        self.register_buffer("l2_mean", torch.ones(()))
        self.register_buffer("dssim_mean", torch.ones(()))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x - 0.5)))

    def ssim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pixel, per-channel SSIM of two RGB batches in ``[0, 1]`` ``(N, 3, H, W)``."""
        moments = separable(torch.cat([a, b, a * a, b * b, a * b], 1), self.ssim_row, self.ssim_col)
        mu_a, mu_b, aa, bb, ab = moments.chunk(5, 1)
        var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
        num = (2 * mu_a * mu_b + C1) * (2 * cov + C2)
        return num / ((mu_a * mu_a + mu_b * mu_b + C1) * (var_a + var_b + C2))

    def errors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error and ``(1 - SSIM) / 2`` of the reconstruction, each ``(N, 1, H, W)``."""
        recon = self.reconstruct(x)
        # fp32 whatever the caller's autocast: SSIM's variances are differences of squares
        with torch.autocast(x.device.type, enabled=False):
            x, recon = x.float(), recon.float()
            l2 = ((x - recon) ** 2).mean(1, keepdim=True)
            dssim = ((1 - self.ssim(x, recon)) / 2).mean(1, keepdim=True)
        return l2, dssim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l2, dssim = self.errors(x)
        w = self.l2_weight
        amap = w * l2 / self.l2_mean + (1 - w) * dssim / self.dssim_mean
        return separable(amap, self.blur_row, self.blur_col)


def train_autoencoder(
    net: AutoencoderNet,
    sample_batch: Callable[[int], torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    patience: int,
    max_seconds: float | None,
    progress: ProgressCallback,
    device: torch.device,
) -> dict:
    """Adam on the sum of the two mean errors, the rate decaying to a tenth on a cosine over
    ``steps``; stops as :class:`~workers.anomaly.steps.StepBudget` says (steps, ``patience``,
    ``max_seconds``). Returns the figures for the artifact's metrics."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 10)
    net.train()
    budget = StepBudget(steps, progress, patience, max_seconds)
    for _ in range(steps):
        l2, dssim = net.errors(sample_batch(batch_size).to(device))
        loss = l2.mean() + dssim.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if budget.done_step(float(loss.detach())):
            break
    net.eval()
    return {**budget.summary(), "batch_size": batch_size, "learning_rate": lr}


@torch.no_grad()
def set_normalisers(
    net: AutoencoderNet, batches: Iterable[torch.Tensor], limit: int = NORMALISER_TILES
) -> dict:
    """Set the two errors' means from (at most ``limit``) training tiles."""
    l2_sum, dssim_sum, pixels, tiles = 0.0, 0.0, 0, 0
    for batch in batches:
        l2, dssim = net.errors(batch)
        l2_sum += float(l2.double().sum())
        dssim_sum += float(dssim.double().sum())
        pixels += l2.numel()
        tiles += batch.shape[0]
        if tiles >= limit:
            break
    net.l2_mean.fill_(max(l2_sum / pixels, 1e-12))
    net.dssim_mean.fill_(max(dssim_sum / pixels, 1e-12))
    return {"l2_mean": float(net.l2_mean), "dssim_mean": float(net.dssim_mean)}


def build(net_args: dict, pretrained: bool = False) -> AutoencoderNet:
    del pretrained  # nothing pretrained: an artifact holds every tensor
    return AutoencoderNet(**net_args)


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    rng = np.random.default_rng(config.seed)
    net_args = {
        "channels": list(CHANNELS),
        "latent": LATENT,
        "l2_weight": L2_WEIGHT,
        "blur_sigma": BLUR_SIGMA,
    }
    net = build(net_args).to(device)
    metrics = train_autoencoder(
        net,
        lambda n: data.images.random_crops(n, rng),
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.learning_rate,
        patience=config.patience,
        max_seconds=config.max_seconds,
        progress=Phase(progress, 0.0, 0.8),
        device=device,
    )
    batches = data.images.grid_batches(8, device, Phase(progress, 0.8, 0.88))
    metrics.update(set_normalisers(net, batches))
    return Fitted(net, net_args, metrics)


# four stride-2 levels: 64 px inputs give a 4 x 4 bottleneck
register(
    ModelSpec(
        "autoencoder",
        build,
        fit,
        min_input_size=64,
        train_defaults={"steps": STEPS, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE},
    )
)
