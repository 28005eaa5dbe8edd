"""FastFlow (anomalib ``FastflowModel`` and ``FastflowLoss``) on the offline Lite0 backbone.

FastFlow (Yu et al. 2021, https://arxiv.org/abs/2111.07677): a frozen ImageNet backbone's
features at three strides go through a trainable LayerNorm each and then a 2D normalizing flow
each (8 ``AllInOneBlock`` affine coupling steps with 3 x 3 and 1 x 1 convolutions, FrEIA's
``SequenceINN``), trained to map normal features to a standard normal: the loss is their
negative log-likelihood, ``0.5 * |z|^2 - log|det J|``. Where the flow maps a feature far from
the normal ones, ``z`` is large.

**The map differs from anomalib's in two ways**, both measured on the dev sets with the same
trained networks (300 steps, recalibrated each time):

* anomalib's ``AnomalyMapGenerator`` turns each layer's ``0.5 * mean_c z^2`` into a likelihood,
  ``-exp(-0.5 * mean_c z^2)`` in ``[-1, 0]``, and averages the upsampled layers. Our forward
  averages the upsampled ``0.5 * mean_c z^2`` itself (the same per-layer ranking, before the
  exp; :meth:`FastflowNet.layer_maps`). anomalib's map is bounded at 0 and saturates there, and
  our calibration fits a Gumbel law to the held-out normal images' maxima, whose upper
  quantiles can then lie above 0, where no image can reach: on bottle the image threshold came
  out at +0.24 (pixel threshold -0.015), not one of the 15 defect images was flagged and region
  recall was 0.133; with the unbounded map, 12 of 15 flagged and region recall 0.80, while
  image and pixel AUROC barely moved (0.893 -> 0.887, 0.939 -> 0.943). On magnetic_tile the
  two maps scored alike (region recall 0.279 and 0.262).
* The map is then blurred with a Gaussian of sigma :data:`BLUR_SIGMA` = 4 px, anomalib's
  ``GaussianBlur2d`` as PaDiM and PatchCore end theirs (in two 1-D passes,
  :func:`~workers.anomaly.backbone.separable_blur`). anomalib's FastFlow has none; its stride-4
  layer makes a speckled map, whose maximum (the image score) is noise on a good image. On
  magnetic_tile it raised image AUROC 0.760 -> 0.815, pixel AUROC 0.774 -> 0.804, AU-PRO
  0.698 -> 0.737 and region recall 0.262 -> 0.508; on bottle region recall 0.80 -> 0.867,
  image AUROC unchanged (0.887).

The backbone is the ImageNet EfficientNet-Lite0 from PyPI at ``blocks.1/2/4`` (24/40/112
channels at strides 4/8/16: timm's ``features_only`` ``out_indices=[1, 2, 3]``, the same stages
as anomalib's resnet18 ``out_indices=[1, 2, 3]``, and STFPM's and PaDiM's layers). anomalib's
``FastflowModel.__init__`` accepts only resnet18, wide_resnet50_2 and two transformers, and
builds them with a timm hub download; ``OfflineFastflowModel`` (a subclass, made by
:func:`_offline_fastflow_model`) builds the CNN branch of that ``__init__`` (the same
LayerNorms, flow blocks and map generator) on Lite0 with ``pretrained=False``, and the caller
fills it from the PyPI file. Its training forward, LayerNorms, flow blocks and loss are
anomalib's own, and so is its eval forward (``net.model(x).anomaly_map`` still gives anomalib's
map; the tests compare the two). Everything is in the ``state_dict`` (the backbone too, and
each coupling step's fixed random channel permutation ``w_perm``), so loading an artifact needs
neither the PyPI file nor a download. The LayerNorms normalise over ``(C, H, W)``, so the
network only takes the ``input_size`` it was trained at (``net_args``), like anomalib's.

Training is anomalib's: Adam with lr 1e-3 and weight decay 1e-5 on the LayerNorms and flows
(``Fastflow.configure_optimizers``), the backbone frozen, in our own loop for progress,
cancellation, ``max_seconds`` and ``patience``. FastFlow's own defaults
(``ModelSpec.train_defaults``, taken when ``TrainConfig`` leaves them at ``None``) are that
learning rate and batches of :data:`BATCH_SIZE` random crops (anomalib trains at 32).

The loss is a negative log-likelihood summed over every feature value (167 936 per image at
256 px), and it goes below zero as the flow learns: :class:`StepBudget`'s early stop ("1 %
below the best") reads a negative loss the wrong way round. The budget (progress messages,
``patience``, the artifact's ``final_loss``) is therefore given ``exp(loss / values)``, the
loss per feature value made positive: a 1 % improvement is then the mean negative
log-likelihood dropping by 0.01 nats per value, whatever its sign.

Measured (``benchmarks/anomaly.py --runs bottle:fastflow magnetic_tile:fastflow --steps 300``,
one thread, whole image at 256 px, on a 2-core machine with little else running): image
AUROC 0.887 (95 % interval 0.68-1.00), pixel AUROC 0.948, AU-PRO 0.776, region recall 0.867
on bottle, against PaDiM's 1.000 / 0.984 / 0.957 / 1.000; on magnetic_tile 0.815 (0.70-0.91)
/ 0.804 / 0.737 / 0.508, against PaDiM's 0.796 / 0.835 / 0.814 / 0.607. 200 s of training
per set (0.66 s per step), 57-60 ms per image on torch, a 6.6 MB artifact.
After 300 steps the loss was still falling (magnetic_tile's much less far than bottle's):
anomalib trains for hundreds of epochs, a GPU worker's job.

The flows export to ONNX (opset 17, dynamic batch: split, 3 x 3 and 1 x 1 convolutions, the
tanh-clamped affine coupling, the permutation as a 1 x 1 convolution) and ONNX Runtime matches
torch to 3e-7; OpenVINO too in fp32, which the runtimes ask for (left to its default bf16 it
moved the map by 2 % of its range). INT8 (``export_openvino_int8``) quantizes only the
backbone; on the tests' small model its check refused it (99th percentile 0.065 against the
0.05 limit), so the app does not make it by default.
"""

from __future__ import annotations

import functools
import logging
import math
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

#: timm ``features_only`` indices of tf_efficientnet_lite0: ``blocks.1/2/4``, 24/40/112 channels
#: at strides 4/8/16 (anomalib's resnet18 takes ``out_indices=[1, 2, 3]`` too: layer1-3).
OUT_INDICES = (1, 2, 3)
#: anomalib's ``Fastflow`` defaults for its CNN backbones.
FLOW_STEPS = 8
CONV3X3_ONLY = False
HIDDEN_RATIO = 1.0
#: The Gaussian blur that ends the map (PaDiM's and PatchCore's in anomalib; not FastFlow's).
BLUR_SIGMA = 4
#: anomalib's ``Fastflow.configure_optimizers``: Adam(lr=1e-3, weight_decay=1e-5).
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-5
#: The default training batch (anomalib: 32; a larger one costs proportionally more per step).
BATCH_SIZE = 8


@functools.cache
def _offline_fastflow_model() -> type:
    """:class:`OfflineFastflowModel`, made when first needed: anomalib is imported by the
    network, not by this module (the model table lists the modules without importing torch's
    world)."""
    import timm
    from anomalib.models.image.fastflow.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block

    class OfflineFastflowModel(FastflowModel):
        """anomalib's ``FastflowModel`` on timm's Lite0, built without the hub download.

        The CNN branch of ``FastflowModel.__init__`` (``features_only`` backbone, one trainable
        ``LayerNorm`` and one flow block per layer, the map generator) with
        ``pretrained=False`` (the caller fills the backbone); forward (hidden variables and
        log-Jacobians in training, an ``InferenceBatch`` in eval) is anomalib's.
        """

        def __init__(
            self,
            input_size: tuple[int, int],
            backbone: str = LITE0,
            flow_steps: int = FLOW_STEPS,
            conv3x3_only: bool = CONV3X3_ONLY,
            hidden_ratio: float = HIDDEN_RATIO,
        ) -> None:
            nn.Module.__init__(self)
            self.input_size = input_size
            self.feature_extractor = timm.create_model(
                backbone, pretrained=False, features_only=True, out_indices=list(OUT_INDICES)
            )
            _drop_unused_blocks(self.feature_extractor)
            channels = self.feature_extractor.feature_info.channels()
            scales = self.feature_extractor.feature_info.reduction()
            self.norms = nn.ModuleList(
                nn.LayerNorm(
                    [c, int(input_size[0] / s), int(input_size[1] / s)], elementwise_affine=True
                )
                for c, s in zip(channels, scales, strict=True)
            )
            for parameter in self.feature_extractor.parameters():
                parameter.requires_grad = False
            self.fast_flow_blocks = nn.ModuleList(
                create_fast_flow_block(
                    input_dimensions=[c, int(input_size[0] / s), int(input_size[1] / s)],
                    conv3x3_only=conv3x3_only,
                    hidden_ratio=hidden_ratio,
                    flow_steps=flow_steps,
                )
                for c, s in zip(channels, scales, strict=True)
            )
            self.anomaly_map_generator = AnomalyMapGenerator(input_size=input_size)

    return OfflineFastflowModel


def _drop_unused_blocks(features: nn.Module) -> None:
    """Keep timm's blocks up to the last feature: its ``features_only`` Lite0 keeps (and runs)
    ``blocks.5/6`` at stride 32 though no feature comes from them (as in STFPM)."""
    last = features.feature_info.module_name()[-1]  # "blocks.4"
    features.blocks = features.blocks[: 1 + int(last.split(".")[1])]


class FastflowNet(nn.Module):
    """FastFlow (anomalib ``FastflowModel``) on the offline Lite0 backbone at one input size;
    forward returns the negative log-likelihood map (:meth:`forward`)."""

    def __init__(self, input_size: int, pretrained: bool = False) -> None:
        super().__init__()
        configure_offline()
        self.input_size = input_size
        self.model = _offline_fastflow_model()(input_size=(input_size, input_size))
        if pretrained:  # an artifact's backbone comes with its state_dict
            load_lite0_into(self.model.feature_extractor)
        from anomalib.models.components import GaussianBlur2d

        k = 2 * int(4.0 * BLUR_SIGMA + 0.5) + 1  # 33, as PaDiM's AnomalyMapGenerator
        self.blur = GaussianBlur2d(kernel_size=(k, k), sigma=(BLUR_SIGMA, BLUR_SIGMA), channels=1)
        self.model.eval()

    def flow(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Hidden variables and log-Jacobians of RGB ``x`` in ``[0, 1]`` (anomalib's training
        forward; the model must be in training mode)."""
        return self.model(lite_normalise(x))

    def layer_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, at its own stride: ``0.5 * mean_c z^2``, minus anomalib's ``log_prob``
        (its ``AnomalyMapGenerator`` returns ``-exp(log_prob)`` upsampled)."""
        m = self.model
        features = m._get_cnn_features(lite_normalise(x))  # backbone, then the LayerNorms
        hidden = [block(f)[0] for block, f in zip(m.fast_flow_blocks, features, strict=True)]
        return [0.5 * torch.mean(z**2, dim=1, keepdim=True) for z in hidden]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over layers of :meth:`layer_maps`, each upsampled bilinearly to the input
        (anomalib's map without its ``-exp(-.)``), blurred with sigma :data:`BLUR_SIGMA` as
        PaDiM's (in two 1-D passes, :func:`separable_blur`); the module docstring says why."""
        size = x.shape[-2:]
        maps = [
            nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in self.layer_maps(x)
        ]
        return separable_blur(self.blur, sum(maps[1:], maps[0]) / len(maps))


def feature_values(net: FastflowNet) -> int:
    """Feature values per image (the loss is summed over them)."""
    return sum(int(np.prod(norm.normalized_shape)) for norm in net.model.norms)


def train_fastflow(
    net: FastflowNet,
    sample_batch: Callable[[int], torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    progress: ProgressCallback,
    patience: int,
    max_seconds: float | None,
    device: torch.device,
    lr: float = LEARNING_RATE,
) -> dict:
    """Train the LayerNorms and flows on ``steps`` batches with anomalib's loss and optimiser.

    Early stopping as EfficientAD's, on ``exp(loss per feature value)`` (positive, where the
    loss goes negative): stops when it has not improved by 1 % for ``patience`` steps (0:
    never). Returns the figures for the artifact's metrics.
    """
    from anomalib.models.image.fastflow.loss import FastflowLoss

    model = net.model
    loss_fn = FastflowLoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    per_value = 1.0 / feature_values(net)
    model.train()
    budget = StepBudget(steps, progress, patience, max_seconds)
    for _ in range(steps):
        hidden, log_jacobians = net.flow(sample_batch(batch_size).to(device))
        loss = loss_fn(hidden, log_jacobians)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if budget.done_step(math.exp(min(float(loss.detach()) * per_value, 50.0))):
            break
    model.eval()
    return {
        **budget.summary(),
        "loss": "exp(negative log-likelihood per feature value)",
        "batch_size": batch_size,
        "learning_rate": lr,
    }


def build(net_args: dict, pretrained: bool = False) -> FastflowNet:
    return FastflowNet(int(net_args["input_size"]), pretrained=pretrained)


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    rng = np.random.default_rng(config.seed)
    net_args = {"input_size": config.input_size}
    net = build(net_args, pretrained=True).to(device)
    images = data.images
    history = train_fastflow(
        net,
        lambda n: images.random_crops(n, rng),
        steps=config.steps,
        batch_size=config.batch_size,
        progress=Phase(progress, 0.02, 0.85),
        patience=config.patience,
        max_seconds=config.max_seconds,
        device=device,
        lr=config.learning_rate,
    )
    net.eval()
    return Fitted(net, net_args, {"out_indices": list(OUT_INDICES), **history})


register(
    ModelSpec(
        "fastflow",
        build,
        fit,
        quantized_modules=("feature_extractor",),
        int8_by_default=False,
        train_defaults={"steps": 1000, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE},
    )
)
