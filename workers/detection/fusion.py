"""Fusion of an image's features with its reference's, per pyramid level (the Siamese detector).

The backbone runs on the image and on its aligned reference (golden sample, "before" image)
with the same weights. At each level the fused feature is

    f = f_image + act(BN(conv1x1([f_image, |f_image - f_reference|])))

and goes to the unchanged neck and head. The BatchNorm's scale starts at zero, so an untrained
fusion passes ``f_image`` through exactly: a new Siamese detector starts as the single-image
detector with the same weights (pretrained backbone included) and learns how much of the change
to add. The 1x1 convolution sees the image's own feature beside the difference, so it can tell
a part that appeared (short, spur, copper) from one that went missing (open, mouse bite, pin
hole), which ``|difference|`` alone cannot.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import ConvBNLayer


class FusionLevel(nn.Module):
    """``f_image + act(BN(conv1x1([f_image, |f_image - f_reference|])))`` for one level."""

    def __init__(self, channels: int, act: str = "swish") -> None:
        super().__init__()
        self.mix = ConvBNLayer(2 * channels, channels, 1, act=act)
        nn.init.kaiming_normal_(self.mix.conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.mix.bn.weight)  # the fusion starts as the identity on f_image

    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return image + self.mix(torch.cat([image, (image - reference).abs()], dim=1))


class ReferenceFusion(nn.Module):
    """One :class:`FusionLevel` per backbone output."""

    def __init__(self, channels: list[int], act: str = "swish") -> None:
        super().__init__()
        self.levels = nn.ModuleList(FusionLevel(c, act) for c in channels)

    def forward(
        self, images: list[torch.Tensor], references: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        return [level(a, b) for level, a, b in zip(self.levels, images, references, strict=True)]


__all__ = ["FusionLevel", "ReferenceFusion"]
