"""The PP-YOLOE+-SOD network, its weight initialisation and deploy conversion."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import CSPResNet, Lite0Backbone, RepVggBlock
from .config import ModelConfig
from .errors import DetectionError
from .fusion import ReferenceFusion
from .head import HeadOutput, PPYOLOEHead
from .neck import CustomCSPPAN
from .nms import postprocess


def stack_reference(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """The input of a "stacked" detector: [B, 3, H, W] of the image's grey, its aligned
    reference's grey and their absolute difference, from two [0, 1] RGB batches. The network
    sees where the part differs from its golden sample at full resolution, before any
    convolution (the Siamese fusion compares features at stride 8 and coarser)."""
    grey = images.mean(dim=1, keepdim=True)
    reference = references.mean(dim=1, keepdim=True)
    return torch.cat([grey, reference, (grey - reference).abs()], dim=1)


class PPYOLOE(nn.Module):
    """Backbone + CustomCSPPAN + ET-head; attribute names match PaddleDetection's ``YOLOv3``
    architecture (``backbone``, ``neck``, ``yolo_head``) so converted state dicts line up."""

    def __init__(self, cfg: ModelConfig, pretrained_backbone: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.backbone == "cspresnet":
            self.backbone: nn.Module = CSPResNet(
                layers=cfg.layers,
                channels=cfg.channels,
                act="swish",
                return_idx=cfg.return_idx,
                use_large_stem=cfg.use_large_stem,
                width_mult=cfg.width_mult,
                depth_mult=cfg.depth_mult,
                use_alpha=cfg.use_alpha,
            )
        else:
            self.backbone = Lite0Backbone(pretrained=pretrained_backbone)
        self.neck = CustomCSPPAN(
            in_channels=list(self.backbone.out_channels),
            out_channels=cfg.neck_out_channels,
            act="swish",
            stage_num=cfg.stage_num,
            block_num=cfg.block_num,
            spp=cfg.spp,
            width_mult=cfg.width_mult,
            depth_mult=cfg.depth_mult,
            dim_feedforward=cfg.dim_feedforward,
            dropout=cfg.dropout,
            activation=cfg.trans_activation,
            nhead=cfg.nhead,
            num_layers=cfg.num_layers,
            use_trans=cfg.use_trans,
        )
        self.yolo_head = PPYOLOEHead(self.neck.out_channels, cfg)
        self._init_convs()
        # Built last, so the other weights are drawn exactly as for the single-image network
        # (same seed, same weights); it initialises itself (identity on the image's features).
        self.fusion: ReferenceFusion | None = None
        if cfg.reference == "siamese":
            self.fusion = ReferenceFusion(list(self.backbone.out_channels))

    def _init_convs(self) -> None:
        # Paddle's Conv2D default is Normal(0, sqrt(2 / fan_in)); the head sets its own init.
        head_convs = {id(m) for m in self.yolo_head.modules()}
        skip = set()
        if isinstance(self.backbone, Lite0Backbone):
            skip = {id(m) for m in self.backbone.modules()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in head_convs and id(m) not in skip:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.neck.modules():
            if isinstance(m, nn.Linear):
                bound = 1 / m.in_features**0.5  # ppdet's linear_init_
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.uniform_(m.bias, -bound, bound)

    def features(
        self, images: torch.Tensor, references: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Backbone features; for a Siamese network, fused with the references' features; for
        a stacked one, of the stacked pair (:func:`stack_reference`)."""
        if self.fusion is None and not self.cfg.siamese:
            if references is not None:
                raise DetectionError(
                    "this detector is a single-image model: it takes no reference image"
                )
            return self.backbone(images)
        if references is None:
            raise DetectionError(
                f"this detector is a {self.cfg.kind} model: it needs the reference image "
                "(aligned to the "
                "image, same size) beside each image"
            )
        if references.shape != images.shape:
            raise DetectionError(
                f"reference batch {tuple(references.shape)} does not match the image batch "
                f"{tuple(images.shape)}"
            )
        if self.fusion is None:  # "stacked": one pass over (grey, reference grey, difference)
            return self.backbone(stack_reference(images, references))
        # Two passes through the same backbone (shared weights). One pass over the doubled
        # batch would be the same network, but it was slower on the CPU (lite0 at 416 px, batch
        # 4, forward and backward: 3.4-3.6 s against 2.5-3.0 s for two passes).
        return self.fusion(self.backbone(images), self.backbone(references))

    def head_outputs(
        self, images: torch.Tensor, references: torch.Tensor | None = None
    ) -> HeadOutput:
        """Raw head outputs for a batch of [0, 1] RGB images [B, 3, H, W] (H, W % 32 == 0) and,
        for a Siamese network, their references (same shape)."""
        return self.yolo_head(self.neck(self.features(images, references)))

    def forward(
        self, images: torch.Tensor, references: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [B, L, C] and boxes [B, L, 4] in input pixels (before NMS)."""
        return self.yolo_head.decode(self.head_outputs(images, references))

    def loss(
        self,
        images: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_bboxes: torch.Tensor,
        pad_gt_mask: torch.Tensor,
        references: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training loss dict (``loss`` is the weighted total)."""
        return self.yolo_head.loss(
            self.head_outputs(images, references), gt_labels, gt_bboxes, pad_gt_mask
        )

    @torch.no_grad()
    def postprocess(
        self,
        scores: torch.Tensor,
        boxes: torch.Tensor,
        score_threshold: float | None = None,
    ) -> list[torch.Tensor]:
        """Per-image NMS with the config's SOD limits; rows (label, score, x1, y1, x2, y2)."""
        thr = self.cfg.score_threshold if score_threshold is None else score_threshold
        return postprocess(scores, boxes, self.cfg, thr)

    def convert_to_deploy(self) -> PPYOLOE:
        """Re-parameterise every RepVGG block into a single conv (inference only)."""
        for m in self.modules():
            if isinstance(m, RepVggBlock):
                m.convert_to_deploy()
        return self


def build_model(cfg: ModelConfig, pretrained_backbone: bool = True) -> PPYOLOE:
    """Build a detector; ``pretrained_backbone`` only matters for the lite0 backbone."""
    return PPYOLOE(cfg, pretrained_backbone=pretrained_backbone)
