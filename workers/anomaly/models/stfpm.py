"""STFPM (anomalib ``STFPMModel`` and ``STFPMLoss``) on the offline Lite0 backbone.

Student-Teacher Feature Pyramid Matching (Wang et al. 2021, https://arxiv.org/abs/2103.04257):
the teacher is the ImageNet EfficientNet-Lite0 from PyPI, frozen; the student is the same
architecture, randomly initialised, and learns to reproduce the teacher's L2-normalised features
at ``blocks.1/2/4`` (24/40/112 channels at strides 4/8/16, PaDiM's layers, like resnet18's
layer1-3 in anomalib) on normal images. Where the two disagree, the student has not seen such a
patch. The map is anomalib's: per layer ``0.5 * ||t/|t| - s/|s|||^2`` (= 1 - cosine similarity)
over channels, upsampled bilinearly to the input, and the layers multiplied.

anomalib's ``STFPMModel.__init__`` builds its teacher with ``pre_trained=True``, which is a timm
hub download; ``OfflineSTFPMModel`` (a subclass, made by :func:`_offline_stfpm_model`) builds
the same two ``TimmFeatureExtractor`` networks with ``pre_trained=False`` and fills the teacher
from the PyPI file, as PaDiM and PatchCore do. Its forward, its map generator and the loss are
anomalib's own. Teacher and student are both in the ``state_dict``, so loading an artifact needs
neither the PyPI file nor a download.

Training is anomalib's: SGD with lr 0.4, momentum 0.9 and weight decay 1e-3 on the student
(``Stfpm.configure_optimizers``), in our own loop for progress, cancellation, ``max_seconds``
and ``patience`` (the same early stop as EfficientAD). Two settings are STFPM's own
defaults (``ModelSpec.train_defaults``, taken when ``TrainConfig`` leaves them at ``None``):

* The learning rate is :data:`LEARNING_RATE`: EfficientAD's Adam rate (1e-4) is 4000 times too
  small for SGD on a loss over unit vectors (anomalib's 0.4).
* A batch holds :data:`MIN_BATCH` crops, and never fewer: the student is a BatchNorm network
  trained from scratch, and EfficientAD's batch of 1 would train it on one image's statistics.
  anomalib trains it at 32; a larger ``batch_size`` is used as given.

A step is a batch of random crops of the training images (the whole image at ``scale=None``,
which resizes every image to the input size). The student's BatchNorm running statistics stay
as training leaves them, as in anomalib. After a short run they lag the weights, but
re-estimating them on the training images afterwards made the maps worse, not better (tried
while this was built, on both dev sets), so it is not done.

INT8 (``export_openvino_int8``) quantizes teacher and student; the cosine distances and their
product stay fp32. While this was built its check passed on bottle and refused magnetic_tile,
with little gain over fp32 OpenVINO, so the app does not make it by default.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..backbone import LITE0, lite_normalise, load_lite0_into
from ..config import Phase, ProgressCallback, TrainConfig
from ..offline import configure_offline
from ..steps import StepBudget
from ..training_data import TrainData
from . import Fitted, ModelSpec, register

logger = logging.getLogger(__name__)

#: Feature layers of tf_efficientnet_lite0 (24/40/112 channels at strides 4/8/16), like
#: anomalib's resnet18 layer1-3.
LAYERS = ("blocks.1", "blocks.2", "blocks.4")
#: anomalib's ``Stfpm.configure_optimizers``: SGD(lr=0.4, momentum=0.9, weight_decay=1e-3).
LEARNING_RATE = 0.4
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3
#: The smallest training batch (the student's BatchNorm needs more than one image).
MIN_BATCH = 8


@functools.cache
def _offline_stfpm_model() -> type:
    """:class:`OfflineSTFPMModel`, made when first needed: anomalib is imported by the network,
    not by this module (the model table lists the modules without importing torch's world)."""
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.stfpm.torch_model import STFPMModel

    class OfflineSTFPMModel(STFPMModel):
        """anomalib's ``STFPMModel`` with the teacher built without timm's hub download.

        ``STFPMModel.__init__`` with ``pre_trained=False`` for the teacher (the caller fills
        it); forward (features in training, an ``InferenceBatch`` in eval) is anomalib's.
        """

        def __init__(self, layers: Sequence[str], backbone: str = LITE0) -> None:
            nn.Module.__init__(self)
            self.tiler = None
            self.backbone = backbone
            self.teacher_model = TimmFeatureExtractor(
                backbone=backbone, pre_trained=False, layers=layers
            ).eval()
            self.student_model = TimmFeatureExtractor(
                backbone=backbone, pre_trained=False, layers=layers, requires_grad=True
            )
            for parameter in self.teacher_model.parameters():
                parameter.requires_grad = False
            self.anomaly_map_generator = AnomalyMapGenerator()

    return OfflineSTFPMModel


class StfpmNet(nn.Module):
    """STFPM (anomalib ``STFPMModel``) on the offline Lite0 backbone; forward returns the map."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        configure_offline()
        self.model = _offline_stfpm_model()(layers=list(LAYERS), backbone=LITE0)
        for extractor in (self.model.teacher_model, self.model.student_model):
            _drop_unused_blocks(extractor.feature_extractor)
        if pretrained:  # an artifact's teacher comes with its state_dict
            load_lite0_into(self.model.teacher_model.feature_extractor)
        self.model.eval()

    def features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Teacher and student features of RGB ``x`` in ``[0, 1]`` (the student's with grad)."""
        x = lite_normalise(x)
        return self.model.teacher_model(x), self.model.student_model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """anomalib's eval map (``AnomalyMapGenerator``): the product over layers of
        ``compute_layer_map``. anomalib starts the product from a ``torch.ones`` of the batch's
        shape; starting from the first layer is the same product without the constant, which
        keeps the exported graph's batch dynamic without a shape-built tensor."""
        teacher, student = self.features(x)
        layer_map = self.model.anomaly_map_generator.compute_layer_map
        size = x.shape[-2:]
        maps = [layer_map(teacher[k], student[k], size) for k in teacher]
        out = maps[0]
        for m in maps[1:]:
            out = out * m
        return out


def _drop_unused_blocks(features: nn.Module) -> None:
    """Keep timm's blocks up to the last of :data:`LAYERS`: its ``features_only`` Lite0 keeps
    (and runs) ``blocks.5/6`` at stride 32 though no feature comes from them. The features are
    the same; the artifact is 6 instead of 24 MB and eager inference 15 % faster."""
    keep = 1 + max(int(name.split(".")[1]) for name in LAYERS)
    features.blocks = features.blocks[:keep]


def train_stfpm(
    net: StfpmNet,
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
    """Train the student on ``steps`` batches with anomalib's loss and optimiser.

    Early stopping as EfficientAD's: stops when the smoothed loss has not improved by 1 % for
    ``patience`` steps (0: never). Returns the figures for the artifact's metrics.
    """
    from anomalib.models.image.stfpm.loss import STFPMLoss

    model = net.model
    loss_fn = STFPMLoss()
    opt = torch.optim.SGD(
        model.student_model.parameters(),
        lr=lr,
        momentum=MOMENTUM,
        dampening=0.0,
        weight_decay=WEIGHT_DECAY,
    )
    model.student_model.train()
    budget = StepBudget(steps, progress, patience, max_seconds)
    for _ in range(steps):
        teacher, student = net.features(sample_batch(batch_size).to(device))
        loss = loss_fn(teacher, student)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if budget.done_step(float(loss.detach())):
            break
    model.student_model.eval()
    return {**budget.summary(), "batch_size": batch_size, "learning_rate": lr}


def build(net_args: dict, pretrained: bool = False) -> StfpmNet:
    del net_args  # one shape: Lite0 at LAYERS
    return StfpmNet(pretrained=pretrained)


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    rng = np.random.default_rng(config.seed)
    net = build({}, pretrained=True).to(device)
    images = data.images
    history = train_stfpm(
        net,
        lambda n: images.random_crops(n, rng),
        steps=config.steps,
        batch_size=max(config.batch_size, MIN_BATCH),
        progress=Phase(progress, 0.02, 0.85),
        patience=config.patience,
        max_seconds=config.max_seconds,
        device=device,
        lr=config.learning_rate,
    )
    net.eval()
    return Fitted(net, {}, {"layers": list(LAYERS), **history})


register(
    ModelSpec(
        "stfpm",
        build,
        fit,
        quantized_modules=("teacher_model", "student_model"),
        int8_by_default=False,
        train_defaults={"steps": 1000, "batch_size": MIN_BATCH, "learning_rate": LEARNING_RATE},
    )
)
